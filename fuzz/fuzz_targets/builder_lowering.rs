//! Graph-builder calls as a guest makes them, decoded from the fuzzer's
//! bytes, then lowering to ONNX and the wgpu compile of the result.
#![no_main]
use mote_runtime::graph_builder::{AttrValue, GraphDraft, SUPPORTED_OPS};
use mote_runtime::tensor::ElementType;

const TYPES: [ElementType; 7] =
    [ElementType::F32, ElementType::I64, ElementType::I32, ElementType::U8, ElementType::F16, ElementType::F64, ElementType::Bf16];

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut d = GraphDraft::default();
    let mut ops: Vec<u32> = Vec::new();
    let mut bytes = data.chunks_exact(4);
    for (i, c) in bytes.by_ref().enumerate() {
        let made = match c[0] % 3 {
            0 => d.input(&format!("in{i}"), TYPES[c[1] as usize % 7], &[i64::from(c[2] % 5) - 1, i64::from(c[3] % 4)]),
            1 => {
                let ty = TYPES[c[1] as usize % 7];
                let dims = [u32::from(c[2] % 4)];
                d.constant(ty, &dims, vec![c[3]; dims[0] as usize * ty.size()])
            }
            _ if !ops.is_empty() => {
                let op = SUPPORTED_OPS[c[1] as usize % SUPPORTED_OPS.len()];
                let a = ops[c[2] as usize % ops.len()];
                let b = ops[c[3] as usize % ops.len()];
                let attrs = vec![("axis".to_string(), AttrValue::Int(i64::from(c[3] % 5) - 2))];
                d.node(op, &[a, b][..1 + (c[0] as usize / 3) % 2], attrs, 1).map(|v| v[0])
            }
            _ => continue,
        };
        if let Ok(o) = made {
            ops.push(o);
        }
    }
    if let Some(&last) = ops.last() {
        if let Ok(model) = d.lower(&[("out".into(), last)]) {
            assert!(mote_runtime::model_screen::screen(&model).is_ok(), "the builder wrote a model the screen refuses");
            let _ = mote_runtime::backend::wgpu::check_model(&model);
        }
    }
});
