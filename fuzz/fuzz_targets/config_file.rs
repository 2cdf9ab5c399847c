//! One configuration file; every pool of an accepted one is driven through
//! start, timeouts, an upgrade and a shutdown.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| einhyrningsins::fuzzing::config_file(data));
