//! Rust types and host traits generated from `wit/`: the single source of
//! truth for the contract on the host side.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    imports: { default: async },
    exports: { default: async },
});
