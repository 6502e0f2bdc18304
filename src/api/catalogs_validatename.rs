//! `catalogs.validatename`: whether the caller may share a catalog under a name.

use super::{read_record, wait_min_seq, ApiContext, ApiError, ApiRequest};
use crate::model::{validate::catalog_name_problem, CatalogRecord, NameValidation};
use crate::projections::{catalogs::Catalogs, Projection};

/// Valid when the name is well-formed and unowned or owned by the caller.
pub async fn handle(
    context: &ApiContext,
    request: &ApiRequest<'_>,
) -> Result<serde_json::Value, ApiError> {
    wait_min_seq(context, request, &[Catalogs::NAME]).await?;
    let name = request.text()?;
    let result = if let Some(problem) = catalog_name_problem(name) {
        NameValidation {
            valid: false,
            message: format!("Catalog name is not shareable: {problem}"),
        }
    } else {
        let record: Option<CatalogRecord> = read_record(&context.store.catalogs, name).await?;
        match record {
            Some(record) if record.owner != request.caller.account => NameValidation {
                valid: false,
                message: "Catalog name has already been shared".into(),
            },
            _ => NameValidation {
                valid: true,
                message: String::new(),
            },
        }
    };
    serde_json::to_value(result).map_err(|_| ApiError::internal())
}
