//! Worker output capture, the parts that know nothing of the master: the
//! line assembler and the ring of recent lines (`lines`, `ring`: pure), the
//! rotated files the master writes (`file`) and the pipes a worker's
//! stdout/stderr go into (`pipe`).
//!
//! The master (src/master/output.rs) creates a pipe per captured stream
//! before the fork, reads its end on the loop, and hands each whole line to
//! the pool's sink (the master's log or a file) and to the pool's ring.
//! docs/logging.md is the operator's side of it.

pub mod file;
pub mod lines;
pub mod pipe;
pub mod ring;

pub use lines::{LineAssembler, Stream};
