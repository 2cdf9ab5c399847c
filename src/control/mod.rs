//! Control socket: wire codec, connections, commands.
//!
//! `codec` is the wire format (JSON and einhorn's escaped YAML), `server` the
//! transport on the mio loop, `commands` what each command does to the master.

pub mod codec;
pub mod commands;
pub mod server;
