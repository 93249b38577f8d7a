//! ONNX's own per-operator conformance cases (`onnx/backend/test/data/node`,
//! shipped with the `onnx` Python package) on the wgpu backend: every case
//! whose operators the backend claims (`WGPU_OPS`) is loaded and run on its
//! `test_data_set_0`, and its outputs compared with ONNX's reference
//! outputs. Each case is reported as passed, failed (a wrong result, or an
//! error after a successful load) or refused (the load refused the model
//! with a message: an attribute combination or type the backend does not
//! implement). The test fails if any case fails. The report is also
//! written to `build/wgpu-conformance.txt`.

#![cfg(feature = "wgpu")]

use mote_runtime::backend::wgpu::supports_op;
use mote_runtime::backend::{standalone, Backend, BackendErrorKind, BackendKind, OwnedTensor, TensorView};
use mote_runtime::onnx_proto::{self as pb, data_type as dt};
use mote_runtime::tensor::ElementType;
use prost::Message;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod common;

/// The checkout: the parent of `MOTE_BUILD_DIR` where that is set (a
/// prebuilt test binary run in another checkout, as scripts/gpu_check.sh
/// does), else the one this file was compiled in.
fn repo_root() -> PathBuf {
    if let Some(root) = std::env::var_os("MOTE_BUILD_DIR").and_then(|b| Path::new(&b).parent().map(Path::to_path_buf)) {
        return root;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    root.canonicalize().unwrap_or(root)
}

/// Writes every node case of the installed `onnx` package (model and
/// `test_data_set_*`, as ONNX's own `generate-data` writes them) to
/// `argv[1]`, for installs whose wheel does not ship `backend/test/data/node`.
const GENERATE: &str = r#"
import os, sys, shutil
import onnx
from onnx import TensorProto, numpy_helper
from onnx.backend.test.case import node
out = sys.argv[1]
tmp = out + ".partial"
shutil.rmtree(tmp, ignore_errors=True)
os.makedirs(tmp)
for case in node.collect_testcases(None):
    d = os.path.join(tmp, case.name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "model.onnx"), "wb") as f:
        f.write(case.model.SerializeToString())
    for i, (inputs, outputs) in enumerate(case.data_sets or []):
        ds = os.path.join(d, f"test_data_set_{i}")
        os.makedirs(ds, exist_ok=True)
        for kind, vals, decls in (("input", inputs, case.model.graph.input), ("output", outputs, case.model.graph.output)):
            for j, v in enumerate(vals):
                if not decls[j].type.HasField("tensor_type"):
                    continue
                t = v if isinstance(v, TensorProto) else numpy_helper.from_array(v, decls[j].name)
                with open(os.path.join(ds, f"{kind}_{j}.pb"), "wb") as f:
                    f.write(t.SerializeToString())
with open(os.path.join(tmp, "ONNX_VERSION"), "w") as f:
    f.write(onnx.__version__)
shutil.rmtree(out, ignore_errors=True)
os.rename(tmp, out)
"#;

/// The conformance cases' directory: the `onnx` package's own
/// `backend/test/data/node`, or, where the wheel ships without it, the same
/// cases generated from the package's case definitions into
/// `build/onnx-node-cases` (once per onnx version).
fn cases_dir() -> Option<PathBuf> {
    let root = repo_root();
    let python = root.join("deps/venv/bin/python");
    let py = |args: &[&str]| -> Option<String> {
        let out = std::process::Command::new(&python)
            .args(args)
            .output()
            .map_err(|e| eprintln!("{}: {e}", python.display()))
            .ok()?;
        if !out.status.success() {
            eprintln!("{}: {}", python.display(), String::from_utf8_lossy(&out.stderr));
            return None;
        }
        Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let shipped = PathBuf::from(py(&[
        "-c",
        "import onnx, os; print(os.path.join(os.path.dirname(onnx.__file__), 'backend/test/data/node'))",
    ])?);
    if shipped.is_dir() {
        return Some(shipped);
    }
    let version = py(&["-c", "import onnx; print(onnx.__version__)"])?;
    let generated = root.join("build/onnx-node-cases");
    let stamp = std::fs::read_to_string(generated.join("ONNX_VERSION")).unwrap_or_default();
    if stamp.trim() != version {
        eprintln!("{} is missing; generating the node cases into {}", shipped.display(), generated.display());
        std::fs::create_dir_all(root.join("build")).ok()?;
        py(&["-W", "ignore", "-c", GENERATE, generated.to_str()?])?;
    }
    generated.is_dir().then_some(generated)
}

/// A decoded tensor: values in one of three comparable forms.
#[derive(Debug)]
enum Vals {
    F(Vec<f32>),
    I(Vec<i64>),
    B(Vec<bool>),
}

#[derive(Debug)]
struct Tensor {
    elem: i32,
    dims: Vec<usize>,
    vals: Vals,
}

fn decode_tensor(t: &pb::TensorProto) -> Result<Tensor, String> {
    if t.data_location == 1 || !t.external_data.is_empty() {
        return Err("external data".into());
    }
    let dims: Vec<usize> = t.dims.iter().map(|&d| usize::try_from(d).map_err(|_| format!("dim {d}"))).collect::<Result<_, _>>()?;
    let n: usize = dims.iter().product();
    let raw = &t.raw_data;
    let vals = match t.data_type {
        dt::FLOAT if !raw.is_empty() => {
            Vals::F(raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect())
        }
        dt::FLOAT => Vals::F(t.float_data.clone()),
        dt::INT64 if !raw.is_empty() => {
            Vals::I(raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect())
        }
        dt::INT64 => Vals::I(t.int64_data.clone()),
        dt::INT32 if !raw.is_empty() => {
            Vals::I(raw.chunks_exact(4).map(|c| i64::from(i32::from_le_bytes(c.try_into().unwrap()))).collect())
        }
        dt::INT32 => Vals::I(t.int32_data.iter().map(|&x| i64::from(x)).collect()),
        dt::BOOL if !raw.is_empty() => Vals::B(raw.iter().map(|&b| b != 0).collect()),
        dt::BOOL => Vals::B(t.int32_data.iter().map(|&x| x != 0).collect()),
        other => return Err(format!("data type {other}")),
    };
    let len = match &vals {
        Vals::F(v) => v.len(),
        Vals::I(v) => v.len(),
        Vals::B(v) => v.len(),
    };
    if len != n {
        return Err(format!("{len} values for shape {dims:?}"));
    }
    Ok(Tensor { elem: t.data_type, dims, vals })
}

fn read_tensor(path: &Path) -> Result<Tensor, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let t = pb::TensorProto::decode(&bytes[..]).map_err(|e| format!("{}: {e}", path.display()))?;
    decode_tensor(&t)
}

/// Bytes and element type for `compute`.
fn view_bytes(t: &Tensor) -> (ElementType, Vec<u8>) {
    match (&t.vals, t.elem) {
        (Vals::F(v), _) => (ElementType::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        (Vals::I(v), dt::INT32) => (ElementType::I32, v.iter().flat_map(|&x| (x as i32).to_le_bytes()).collect()),
        (Vals::I(v), _) => (ElementType::I64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        (Vals::B(v), _) => (ElementType::U8, v.iter().map(|&b| u8::from(b)).collect()),
    }
}

/// Compares one output; `Err` says how it differs.
fn compare(name: &str, got: &OwnedTensor, want: &Tensor) -> Result<(), String> {
    let gd: Vec<usize> = got.dims.iter().map(|&d| d as usize).collect();
    if gd != want.dims {
        return Err(format!("{name}: shape {gd:?}, expected {:?}", want.dims));
    }
    match &want.vals {
        Vals::F(w) => {
            if got.ty != ElementType::F32 {
                return Err(format!("{name}: type {:?}, expected float32", got.ty));
            }
            let g: Vec<f32> = got.data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
            for (i, (&x, &y)) in g.iter().zip(w).enumerate() {
                let ok = if x.is_nan() || y.is_nan() {
                    x.is_nan() && y.is_nan()
                } else if x.is_infinite() || y.is_infinite() {
                    x == y
                } else {
                    (x - y).abs() <= 1e-3 + 1e-3 * y.abs()
                };
                if !ok {
                    return Err(format!("{name}[{i}]: got {x}, expected {y}"));
                }
            }
        }
        Vals::I(w) => {
            let g: Vec<i64> = match got.ty {
                ElementType::I64 => got.data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect(),
                ElementType::I32 => {
                    got.data.chunks_exact(4).map(|c| i64::from(i32::from_le_bytes(c.try_into().unwrap()))).collect()
                }
                other => return Err(format!("{name}: type {other:?}, expected an integer type")),
            };
            if let Some(i) = g.iter().zip(w).position(|(a, b)| a != b) {
                return Err(format!("{name}[{i}]: got {}, expected {}", g[i], w[i]));
            }
        }
        Vals::B(w) => {
            if got.ty != ElementType::U8 {
                return Err(format!("{name}: type {:?}, expected bool", got.ty));
            }
            let g: Vec<bool> = got.data.iter().map(|&b| b != 0).collect();
            if let Some(i) = g.iter().zip(w).position(|(a, b)| a != b) {
                return Err(format!("{name}[{i}]: got {}, expected {}", g[i], w[i]));
            }
        }
    }
    Ok(())
}

enum Outcome {
    Pass,
    Fail(String),
    Refused(String),
    /// Inputs or outputs of a type the test cannot feed or compare.
    Skip(String),
}

fn run_case(backend: &dyn Backend, dir: &Path, model_bytes: Vec<u8>, model: &pb::ModelProto) -> Outcome {
    let graph = model.graph.as_ref().expect("selected models have graphs");
    let loaded = backend.load(Arc::from(model_bytes));
    let set = dir.join("test_data_set_0");
    let read_all = |prefix: &str| -> Result<Vec<Tensor>, String> {
        let mut v = Vec::new();
        for i in 0.. {
            let p = set.join(format!("{prefix}_{i}.pb"));
            if !p.exists() {
                break;
            }
            v.push(read_tensor(&p)?);
        }
        Ok(v)
    };
    let data = read_all("input").and_then(|i| Ok((i, read_all("output")?)));
    let graph_ref = match loaded {
        Ok(g) => g,
        Err(e) => {
            return match e.kind {
                BackendErrorKind::Unsupported | BackendErrorKind::InvalidEncoding => Outcome::Refused(e.message),
                k => Outcome::Fail(format!("load failed with {k:?}: {}", e.message)),
            }
        }
    };
    let (inputs, outputs) = match data {
        Ok(d) => d,
        Err(e) => return Outcome::Skip(format!("test data: {e}")),
    };
    let inits: std::collections::HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let names: Vec<&str> = graph.input.iter().map(|i| i.name.as_str()).filter(|n| !inits.contains(n)).collect();
    if names.len() != inputs.len() || graph.output.len() != outputs.len() {
        return Outcome::Skip(format!(
            "{} inputs / {} outputs in the graph, {} / {} in the data",
            names.len(),
            graph.output.len(),
            inputs.len(),
            outputs.len()
        ));
    }
    let owned: Vec<(ElementType, Vec<u32>, Vec<u8>)> = inputs
        .iter()
        .map(|t| {
            let (ty, b) = view_bytes(t);
            (ty, t.dims.iter().map(|&d| d as u32).collect(), b)
        })
        .collect();
    let views: Vec<(&str, TensorView<'_>)> = names
        .iter()
        .zip(&owned)
        .map(|(n, (ty, dims, data))| (*n, TensorView { ty: *ty, dims, data }))
        .collect();
    let mut ctx = match graph_ref.init_execution_context() {
        Ok(c) => c,
        Err(e) => return Outcome::Fail(format!("context: {e}")),
    };
    let got = match ctx.compute(&views, None) {
        Ok(g) => g,
        Err(e) => return Outcome::Fail(format!("compute failed ({:?}): {}", e.kind, e.message)),
    };
    if got.len() != outputs.len() {
        return Outcome::Fail(format!("{} outputs, expected {}", got.len(), outputs.len()));
    }
    for (((name, g), want), decl) in got.iter().zip(&outputs).zip(&graph.output) {
        if name != &decl.name {
            return Outcome::Fail(format!("output '{name}' where '{}' was expected", decl.name));
        }
        if let Err(e) = compare(name, g, want) {
            return Outcome::Fail(e);
        }
    }
    Outcome::Pass
}

#[test]
fn onnx_node_conformance_cases() {
    let Some(root) = cases_dir() else {
        if std::env::var_os("CI").is_some() {
            panic!("the onnx package's conformance cases are missing (deps/venv; run `make setup`)");
        }
        common::skip("onnx_node_conformance_cases", "the onnx package (deps/venv) is not installed");
        return;
    };
    let backend = standalone(BackendKind::Wgpu)
        .expect("a wgpu adapter (llvmpipe: `apt-get install libvulkan1 mesa-vulkan-drivers`, done by `make setup`)");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("read the cases directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("model.onnx").is_file())
        .collect();
    dirs.sort();
    // Optional filter for working on one op: MOTE_CONFORMANCE_FILTER=test_pad
    let filter = std::env::var("MOTE_CONFORMANCE_FILTER").ok();
    let (mut pass, mut fail, mut refused, mut skipped, mut total) = (0, 0, 0, 0, 0);
    let mut report = Vec::new();
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        let bytes = std::fs::read(dir.join("model.onnx")).expect("read model.onnx");
        let Ok(model) = pb::ModelProto::decode(&bytes[..]) else { continue };
        let Some(graph) = model.graph.as_ref() else { continue };
        let claimed = !graph.node.is_empty()
            && graph
                .node
                .iter()
                .all(|n| (n.domain.is_empty() || n.domain == "ai.onnx") && supports_op(&n.op_type));
        if !claimed {
            continue;
        }
        total += 1;
        let line = match run_case(backend.as_ref(), &dir, bytes, &model) {
            Outcome::Pass => {
                pass += 1;
                format!("PASS    {name}")
            }
            Outcome::Fail(m) => {
                fail += 1;
                format!("FAIL    {name}: {m}")
            }
            Outcome::Refused(m) => {
                refused += 1;
                format!("REFUSED {name}: {m}")
            }
            Outcome::Skip(m) => {
                skipped += 1;
                format!("SKIP    {name}: {m}")
            }
        };
        println!("{line}");
        report.push(line);
    }
    let summary = format!(
        "conformance: {pass} passed, {fail} failed, {refused} refused (of {total} cases of claimed ops){}",
        if skipped > 0 { format!("; {skipped} skipped for test-data types") } else { String::new() }
    );
    println!("{summary}");
    report.push(summary.clone());
    let out = repo_root().join("build");
    if std::fs::create_dir_all(&out).is_ok() {
        let _ = std::fs::write(out.join("wgpu-conformance.txt"), report.join("\n") + "\n");
    }
    assert!(total > 0, "no conformance case uses only claimed operators");
    assert_eq!(fail, 0, "{summary}");
}
