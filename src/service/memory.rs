//! Process-wide memory settings, applied first thing by the binary (and by the benches that run
//! the service in their own process, so that they measure it as shipped).

/// Transparent huge pages off for this process (`prctl(PR_SET_THP_DISABLE)`, what mimalloc's
/// `MIMALLOC_ALLOW_THP=0` does): mimalloc asks for them on its segments and gives freed memory
/// back within milliseconds, so a catch-up's churn paid a zeroed 2 MiB page on fault after fault
/// (a tenth of the process's CPU in a profile of one). Measured in the scale bench, 1 M events
/// over 100 k accounts, alternating runs of the same build with and without: catch-up 0.46×,
/// 0.45×, 0.49× against 0.42×, 0.47×, 0.39× of the raw read sharing both cores (RSS after it
/// 129–130 MiB against 144–145, peak 219–221 against 232–240), and 0.59×, 0.60× against 0.53×,
/// 0.53× with nats-server on a CPU of its own (peak under load 86–100 MiB against 145–165).
/// A failure (an old kernel) leaves them on, which costs only speed.
pub fn without_transparent_huge_pages() {
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}
