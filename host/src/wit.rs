//! Rust types and host traits generated from `wit/`: the single source of
//! truth for the contract on the host side.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    imports: { default: async },
    exports: { default: async },
    // Outbound HTTP is wasmtime's wasi:http, sent through our hook
    // (capabilities::http).
    with: {
        "wasi:http": wasmtime_wasi_http::p2::bindings::http,
        "wasi:io": wasmtime_wasi::p2::bindings::io,
        "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
    },
});
