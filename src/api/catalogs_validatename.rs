//! `catalogs.validatename`: whether the caller may share a catalog under a name.

use super::{ApiContext, ApiError, ApiRequest, Handler};
use crate::contract::{op, CatalogName, NameValidation};
use crate::model::{validate::catalog_name_problem, CatalogRecord};
use crate::projections::{catalogs::Catalogs, Projection};

impl Handler for op::CatalogsValidateName {
    /// Valid when the name is well-formed and unowned or owned by the caller.
    async fn handle(
        context: &ApiContext,
        request: &ApiRequest<'_>,
    ) -> Result<NameValidation, ApiError> {
        request.wait_min_seq(context, &[Catalogs::NAME]).await?;
        let CatalogName(name) = request.body::<Self>("catalog name")?;
        if let Some(problem) = catalog_name_problem(&name) {
            return Ok(NameValidation {
                valid: false,
                message: format!("Catalog name is not shareable: {problem}"),
            });
        }
        let record: Option<CatalogRecord> =
            request.read_record(&context.store.catalogs, &name).await?;
        Ok(match record {
            Some(record) if record.owner != request.caller.account => NameValidation {
                valid: false,
                message: "Catalog name has already been shared".into(),
            },
            _ => NameValidation {
                valid: true,
                message: String::new(),
            },
        })
    }
}
