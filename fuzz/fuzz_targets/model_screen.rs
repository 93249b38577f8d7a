//! The screen every model passes before a backend sees it.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = mote_runtime::model_screen::screen(data);
});
