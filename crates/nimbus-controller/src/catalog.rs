//! The system catalog published at first start: `/whisk.system/utils`.

use crate::requests::{ActionPut, CommonPut, PackagePut};
use crate::{Controller, Identity, Result};
use nimbus_model::exec::ExecJson;
use nimbus_model::{EntityKind, KeyValues};
use serde::Deserialize;
use serde_json::json;

const MANIFEST: &str = include_str!("../catalog/utils/manifest.json");
const SOURCES: &[(&str, &str)] = &[
    ("echo.js", include_str!("../catalog/utils/echo.js")),
    ("cat.js", include_str!("../catalog/utils/cat.js")),
    ("sort.js", include_str!("../catalog/utils/sort.js")),
    ("split.js", include_str!("../catalog/utils/split.js")),
    ("head.js", include_str!("../catalog/utils/head.js")),
    ("date.js", include_str!("../catalog/utils/date.js")),
];

#[derive(Deserialize)]
struct Manifest {
    package: String,
    #[serde(default)]
    description: String,
    actions: Vec<ManifestAction>,
}

#[derive(Deserialize)]
struct ManifestAction {
    name: String,
    file: String,
    kind: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    parameters: serde_json::Value,
    #[serde(rename = "sampleInput", default)]
    sample_input: Option<serde_json::Value>,
    #[serde(rename = "sampleOutput", default)]
    sample_output: Option<serde_json::Value>,
}

impl Controller {
    /// Publishes the utils package in `whisk.system` unless it is already there.
    pub async fn install_catalog(&self, system: &Identity) -> Result<bool> {
        let m: Manifest = serde_json::from_str(MANIFEST)
            .map_err(|e| crate::ControllerError::Internal(format!("catalog manifest: {e}")))?;
        if self
            .store
            .get_entity(&system.namespace, EntityKind::Package, &m.package)
            .await?
            .is_some()
        {
            return Ok(false);
        }
        let mut ann = KeyValues::new();
        ann.set("description", json!(m.description));
        self.put_package(
            system,
            "_",
            &m.package,
            PackagePut {
                common: CommonPut {
                    publish: Some(true),
                    annotations: Some(ann),
                    ..Default::default()
                },
                ..Default::default()
            },
            false,
        )
        .await?;
        for a in &m.actions {
            let Some((_, code)) = SOURCES.iter().find(|(f, _)| *f == a.file) else {
                return Err(crate::ControllerError::Internal(format!(
                    "catalog file {} is not built in",
                    a.file
                )));
            };
            let mut ann = KeyValues::new();
            ann.set("description", json!(a.description));
            ann.set("parameters", a.parameters.clone());
            if let Some(s) = &a.sample_input {
                ann.set("sampleInput", s.clone());
            }
            if let Some(s) = &a.sample_output {
                ann.set("sampleOutput", s.clone());
            }
            let put = ActionPut {
                exec: Some(ExecJson {
                    kind: a.kind.clone(),
                    code: Some(code.to_string()),
                    ..Default::default()
                }),
                common: CommonPut {
                    annotations: Some(ann),
                    ..Default::default()
                },
                ..Default::default()
            };
            self.put_action(system, "_", &format!("{}/{}", m.package, a.name), put, true)
                .await?;
        }
        Ok(true)
    }
}
