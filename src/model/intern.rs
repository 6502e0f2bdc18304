//! Dense ids for the strings of the log (account keys, catalog names): each distinct string is
//! held once, and everything else refers to it by a `u32`. Ids are given in order of first
//! appearance, so folding the same log gives the same ids on every instance and after a
//! restart from a snapshot.

use hashbrown::{DefaultHashBuilder, HashTable};
use std::hash::BuildHasher;

/// Strings by id and ids by string.
#[derive(Clone, Default)]
pub struct Interner {
    names: Vec<Box<str>>,
    /// Ids, found by the hash of their string (which is held only in `names`).
    table: HashTable<u32>,
    hasher: DefaultHashBuilder,
}

impl Interner {
    /// The id of `name`, if it was interned.
    pub fn get(&self, name: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(name);
        self.table
            .find(hash, |&id| &*self.names[id as usize] == name)
            .copied()
    }

    /// The id of `name`, interning it if it is new.
    ///
    /// # Panics
    /// Past `u32::MAX` distinct strings (four billion accounts or catalog names).
    pub fn intern(&mut self, name: &str) -> u32 {
        if let Some(id) = self.get(name) {
            return id;
        }
        let id = u32::try_from(self.names.len()).expect("fewer than 2^32 distinct names");
        self.names.push(name.into());
        self.index(id);
        id
    }

    /// The string of `id`.
    ///
    /// # Panics
    /// For an id this interner did not give.
    pub fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }

    /// How many strings are interned.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether nothing is interned.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    fn index(&mut self, id: u32) {
        let (names, hasher) = (&self.names, &self.hasher);
        let hash = hasher.hash_one(&*names[id as usize]);
        self.table
            .insert_unique(hash, id, |&other| hasher.hash_one(&*names[other as usize]));
    }
}

impl PartialEq for Interner {
    fn eq(&self, other: &Self) -> bool {
        self.names == other.names
    }
}

impl Eq for Interner {}

impl std::fmt::Debug for Interner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interner")
            .field("len", &self.names.len())
            .finish()
    }
}

impl serde::Serialize for Interner {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.names.serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for Interner {
    /// The strings in id order; a string listed twice is refused (the data is not an interner).
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let names = Vec::<Box<str>>::deserialize(deserializer)?;
        let mut interner = Interner {
            table: HashTable::with_capacity(names.len()),
            names,
            hasher: DefaultHashBuilder::default(),
        };
        for id in 0..interner.names.len() {
            let name = &interner.names[id];
            if interner.get(name).is_some() {
                return Err(serde::de::Error::custom("a name is listed twice"));
            }
            interner.index(id as u32);
        }
        Ok(interner)
    }
}

#[cfg(test)]
mod tests {
    use super::Interner;

    #[test]
    fn ids_follow_first_appearance_and_survive_a_round_trip() {
        let mut interner = Interner::default();
        assert_eq!(interner.intern("b"), 0);
        assert_eq!(interner.intern("a"), 1);
        assert_eq!(interner.intern("b"), 0);
        assert_eq!((interner.get("a"), interner.get("c")), (Some(1), None));
        assert_eq!(interner.name(1), "a");
        let bytes = postcard::to_stdvec(&interner).unwrap();
        let back: Interner = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, interner);
        assert_eq!(back.get("a"), Some(1));
        let twice = postcard::to_stdvec(&vec!["x", "x"]).unwrap();
        assert!(postcard::from_bytes::<Interner>(&twice).is_err());
    }
}
