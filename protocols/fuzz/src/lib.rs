//! The fuzz targets' shared driver (also replayed on stable by protocols/tests/corpus.rs).
#![forbid(unsafe_code)]
mod driver;
pub use driver::drive;
