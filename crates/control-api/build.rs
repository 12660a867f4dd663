use std::path::PathBuf;

/// Enum-typed fields of the resources, shown by name in the config format
/// (`state = "DRAINING"`, `lb_policy = "round_robin"`) instead of a number.
const ENUM_FIELDS: &[(&str, &str)] = &[
    (".tandem.control.v1.Service.hash", "hash_fields"),
    (
        ".tandem.control.v1.Service.xdp_forwarding",
        "xdp_forwarding",
    ),
    (".tandem.control.v1.Node.state", "node_state"),
    (".tandem.control.v1.Cluster.lb_policy", "lb_policy"),
    (
        ".tandem.control.v1.Cluster.proxy_protocol",
        "upstream_proxy_protocol",
    ),
    (
        ".tandem.control.v1.Cluster.upstream_protocol",
        "upstream_protocol",
    ),
    (".tandem.control.v1.HashPolicy.on", "hash_on"),
];

/// Bytes fields, written as hex strings.
const HEX_FIELDS: &[&str] = &[
    ".tandem.control.v1.TicketKey.name",
    ".tandem.control.v1.TicketKey.secret",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Every message and enum gets serde, so the declarative config format
    // (`control_api::config`) follows the resources as fields are added.
    let mut builder = tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("tandem_descriptor.bin"))
        .message_attribute(
            ".tandem.control.v1",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
        )
        .enum_attribute(
            ".tandem.control.v1",
            "#[derive(serde::Serialize, serde::Deserialize)]",
        )
        // A flattened snapshot under the config's own `certificates`.
        .field_attribute(
            ".tandem.control.v1.Snapshot.certificates",
            "#[serde(skip_serializing_if = \"Vec::is_empty\")]",
        );
    for field in [
        "cert_chain_pem",
        "private_key_pem",
        "private_key_fingerprint",
    ] {
        builder = builder.field_attribute(
            format!(".tandem.control.v1.Certificate.{field}"),
            "#[serde(skip_serializing_if = \"String::is_empty\")]",
        );
    }
    for path in HEX_FIELDS {
        builder = builder.field_attribute(path, "#[serde(with = \"crate::config::hex_bytes\")]");
    }
    for (path, module) in ENUM_FIELDS {
        builder = builder.field_attribute(
            path,
            format!("#[serde(with = \"crate::config::enums::{module}\")]"),
        );
    }
    builder.compile_with_config(
        config,
        &[
            "../../proto/tandem/control/v1/resources.proto",
            "../../proto/tandem/control/v1/control.proto",
        ],
        &["../../proto"],
    )?;
    println!("cargo:rerun-if-changed=../../proto");
    Ok(())
}
