//! `wasi:filesystem/preopens`, served from the plugin's `fs` grant instead
//! of wasmtime-wasi's per-context list: the root is opened once per plugin
//! and its descriptor shared by every call, so a call costs no open(2) and
//! close(2) of the root, and one that never touches a file never sees it.

use std::path::Path;

use anyhow::{Context, Result};
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::filesystem::{Descriptor, Dir};
use wasmtime_wasi::p2::bindings::filesystem::preopens;

use super::state::CallState;

/// Replaces wasmtime-wasi's `get-directories` in `linker` with ours.
pub fn add_to_linker(linker: &mut Linker<CallState>) -> Result<()> {
    linker.allow_shadowing(true);
    let added = preopens::add_to_linker::<CallState, SharedPreopens>(linker, |state| {
        let (fs, table) = state.fs_and_table();
        PreopenView {
            root: fs.map(|fs| (&fs.preopen, fs.root.path())),
            table,
        }
    });
    linker.allow_shadowing(false);
    added
        .map_err(anyhow::Error::from)
        .context("linking wasi:filesystem/preopens")
}

struct SharedPreopens;

impl HasData for SharedPreopens {
    type Data<'a> = PreopenView<'a>;
}

struct PreopenView<'a> {
    /// The plugin's root, seen by the guest at its host path.
    root: Option<(&'a Dir, &'a Path)>,
    table: &'a mut ResourceTable,
}

impl preopens::Host for PreopenView<'_> {
    fn get_directories(&mut self) -> wasmtime::Result<Vec<(Resource<Descriptor>, String)>> {
        let Some((dir, path)) = self.root else {
            return Ok(Vec::new());
        };
        // A clone shares the descriptor (an `Arc`), as wasmtime-wasi does
        // when a guest asks twice within one call.
        let descriptor = self.table.push(Descriptor::Dir(dir.clone()))?;
        Ok(vec![(descriptor, path.to_string_lossy().into_owned())])
    }
}
