//! Control socket: wire codec, connections, commands.
