//! Compiles the contracts with protox (no system protoc) and tonic's prost
//! codegen, and writes the descriptor set that server reflection serves.

use std::{env, fs, path::PathBuf};

const PROTOS: &[&str] = &[
    "sovra/commerce/v1/catalog.proto",
    "sovra/commerce/v1/links.proto",
    "sovra/commerce/v1/notifications.proto",
    "sovra/commerce/v1/product_keys.proto",
    "sovra/commerce/v1/subscriptions.proto",
    "sovra/common/v1/common.proto",
    "sovra/identity/v1/access.proto",
    "sovra/identity/v1/auth.proto",
    "sovra/identity/v1/tenant.proto",
    "sovra/identity/v1/user.proto",
    "sovra/relationships/v1/advisors.proto",
    "sovra/relationships/v1/customers.proto",
    "sovra/relationships/v1/delegated_admin.proto",
    "sovra/relationships/v1/reseller.proto",
    "sovra/relationships/v1/service_requests.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=sovra");
    let mut compiler = protox::Compiler::new(["."])?;
    // Imports (google/protobuf/*) go into the set so reflection can resolve them.
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(PROTOS)?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out.join("sovra_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
