//! The control socket: `protocol` is the wire format (JSON and einhorn's escaped
//! YAML) and the typed commands, shared with einhyrningsinsctl; `server` is the
//! transport on the mio loop (connections, buffers, limits). What a command does
//! to the master is decided in `crate::master`.

pub(crate) mod acl;
pub mod protocol;
pub(crate) mod server;
