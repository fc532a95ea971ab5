#![no_main]

#[allow(dead_code)] // each target calls one of the harness functions
#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    harness::spec(data);
});
