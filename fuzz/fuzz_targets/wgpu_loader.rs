//! The wgpu backend's ONNX loader (decode + compile to its program),
//! without a device.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = mote_runtime::backend::wgpu::check_model(data);
});
