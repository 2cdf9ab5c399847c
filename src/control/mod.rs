//! Control socket: wire codec, connections, commands.

pub mod codec;
