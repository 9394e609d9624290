//! The cache directory for everything the VM harness downloads or builds.

use anyhow::{Context, Result};
use std::fs;
use std::path::PathBuf;

/// Where the harness keeps its downloads: `target/vm` unless overridden.
#[derive(Debug)]
pub struct VmDir {
    pub root: PathBuf,
}

impl VmDir {
    pub fn new(root: PathBuf) -> Result<Self> {
        fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        let root = root.canonicalize()?;
        Ok(VmDir { root })
    }
}
