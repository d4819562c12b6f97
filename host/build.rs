//! Generates the CSI gRPC server and client from `proto/csi.proto` with a
//! vendored protoc, so no system protobuf compiler is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let include = protoc_bin_vendored::include_path()?;
    let include_dir = include.to_str().ok_or("non-UTF-8 protoc include path")?;
    // SAFETY: build scripts are single-threaded; tonic-prost-build reads PROTOC.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=../proto/csi.proto");
    println!("cargo:rerun-if-changed=../wit");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&["../proto/csi.proto"], &["../proto", include_dir])?;
    Ok(())
}
