//! Models an attacker sends, built byte by byte: for the tests that prove
//! the node refuses or bounds them, and for the fault-load test. Nothing
//! here runs on a node's own behalf.

use crate::onnx_proto as pb;
use prost::Message;

/// A model whose only output is a `UINT8` initializer of `len` bytes
/// read from the file `location` (ONNX external data): what an attacker
/// sends to read a node's files.
pub fn external_data_model(location: &str, len: usize) -> Vec<u8> {
    let secret = pb::TensorProto {
        dims: vec![len as i64],
        data_type: pb::data_type::UINT8,
        name: "secret".into(),
        external_data: vec![
            pb::StringStringEntryProto { key: "location".into(), value: location.into() },
            pb::StringStringEntryProto { key: "length".into(), value: len.to_string() },
        ],
        data_location: 1,
        ..Default::default()
    };
    model(pb::GraphProto {
        node: vec![pb::NodeProto {
            input: vec!["secret".into()],
            output: vec!["out".into()],
            name: "copy".into(),
            op_type: "Identity".into(),
            ..Default::default()
        }],
        name: "exfil".into(),
        initializer: vec![secret],
        input: vec![],
        output: vec![value_info("out", pb::data_type::UINT8, len as i64)],
    })
}

/// The same tensor hidden in the `then` branch of an `If` node.
pub fn nested_external_data_model(location: &str, len: usize) -> Vec<u8> {
    let inner = pb::ModelProto::decode(&external_data_model(location, len)[..]).expect("own model").graph.unwrap();
    let cond = pb::TensorProto {
        dims: vec![],
        data_type: pb::data_type::BOOL,
        name: "cond".into(),
        raw_data: vec![1],
        ..Default::default()
    };
    let branch = |g: pb::GraphProto| pb::AttributeProto {
        r#type: pb::attribute_type::GRAPH,
        g: Some(g),
        ..Default::default()
    };
    model(pb::GraphProto {
        node: vec![pb::NodeProto {
            input: vec!["cond".into()],
            output: vec!["out".into()],
            name: "if".into(),
            op_type: "If".into(),
            attribute: vec![
                pb::AttributeProto { name: "then_branch".into(), ..branch(inner.clone()) },
                pb::AttributeProto { name: "else_branch".into(), ..branch(inner) },
            ],
            ..Default::default()
        }],
        name: "exfil-nested".into(),
        initializer: vec![cond],
        input: vec![],
        output: vec![value_info("out", pb::data_type::UINT8, len as i64)],
    })
}

fn value_info(name: &str, elem_type: i32, len: i64) -> pb::ValueInfoProto {
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            tensor_type: Some(pb::TypeProtoTensor {
                elem_type,
                shape: Some(pb::TensorShapeProto {
                    dim: vec![pb::Dimension { value: Some(pb::DimensionValue::DimValue(len)) }],
                }),
            }),
        }),
    }
}

fn model(graph: pb::GraphProto) -> Vec<u8> {
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
        producer_name: "mote-exfil-test".into(),
        producer_version: String::new(),
        graph: Some(graph),
    }
    .encode_to_vec()
}

/// A model whose output is one float but whose intermediate is
/// `elements` floats: `Expand` a `[1]` input to `[elements]`, square it,
/// sum it. A few hundred bytes that ask the backend for `4 × elements`
/// bytes (twice).
pub fn memory_bomb_model(elements: u64) -> Vec<u8> {
    let shape = pb::TensorProto {
        dims: vec![1],
        data_type: pb::data_type::INT64,
        name: "shape".into(),
        raw_data: (elements as i64).to_le_bytes().to_vec(),
        ..Default::default()
    };
    model(pb::GraphProto {
        node: vec![node("Expand", &["x", "shape"], "e"), node("Mul", &["e", "e"], "m"), sum_to_y("m")],
        name: "memory-bomb".into(),
        initializer: vec![shape],
        input: vec![value_info("x", pb::data_type::FLOAT, 1)],
        output: vec![scalar_y()],
    })
}

/// A model carrying `bytes` of float weights whose sum it outputs,
/// distinct per `seed`: what a flood of models that fills a node's graph
/// cache is made of.
pub fn weights_model(seed: u32, bytes: usize) -> Vec<u8> {
    let n = bytes / 4;
    let mut raw = Vec::with_capacity(n * 4);
    for i in 0..n as u32 {
        raw.extend(((i ^ seed) % 7).to_le_bytes().map(|b| b & 1));
    }
    let w = pb::TensorProto {
        dims: vec![n as i64],
        data_type: pb::data_type::FLOAT,
        name: "w".into(),
        raw_data: raw,
        ..Default::default()
    };
    model(pb::GraphProto {
        node: vec![sum_to_y("w")],
        name: format!("weights-{seed}"),
        initializer: vec![w],
        input: vec![],
        output: vec![scalar_y()],
    })
}

/// A node of `op` with one output, named after it.
fn node(op: &str, inputs: &[&str], out: &str) -> pb::NodeProto {
    pb::NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![out.into()],
        name: out.into(),
        op_type: op.into(),
        ..Default::default()
    }
}

/// `y = ReduceSum(input)` over every axis, as a scalar.
fn sum_to_y(input: &str) -> pb::NodeProto {
    let mut sum = node("ReduceSum", &[input], "y");
    sum.attribute.push(pb::AttributeProto {
        name: "keepdims".into(),
        r#type: pb::attribute_type::INT,
        i: 0,
        ..Default::default()
    });
    sum
}

/// The scalar float output `y`.
fn scalar_y() -> pb::ValueInfoProto {
    let mut y = value_info("y", pb::data_type::FLOAT, 1);
    if let Some(t) = y.r#type.as_mut().and_then(|t| t.tensor_type.as_mut()) {
        t.shape = Some(pb::TensorShapeProto { dim: vec![] });
    }
    y
}
