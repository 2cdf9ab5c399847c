//! One control-socket line (JSON or einhorn's YAML), as a client may send it.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| einhyrningsins::fuzzing::control_line(data));
