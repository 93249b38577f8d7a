//! Screens untrusted ONNX bytes before any backend parses them.
//!
//! Model bytes come from strangers (a guest's `load`, a deployment's
//! `--model`), and ONNX Runtime treats some of their fields as instructions
//! to touch the node's filesystem:
//! - a tensor whose `data_location` is `EXTERNAL` (or that carries
//!   `external_data` entries) is read from a file named in the model,
//!   resolved against the process's working directory — a guest could make
//!   its model's weights be `mote.toml` or the node key and get them back as
//!   outputs;
//! - an `EPContext` node names a compiled-context file (`embed_mode` 0);
//! - the `ort_config` metadata entry sets session options from the model
//!   (when `ORT_LOAD_CONFIG_FROM_MODEL=1` is in the environment).
//!
//! The screen walks every place a tensor or a graph can hide — graph
//! initializers, sparse initializers, node attributes (tensors, graphs,
//! sparse tensors, lists of each), nested subgraphs of `If`/`Loop`/`Scan`,
//! model-local functions and training graphs — and refuses the model if any
//! of them names a file. It decodes with message types that keep only those
//! fields: tensor payloads are skipped, not copied, so screening a large
//! model costs one pass over its bytes. prost's recursion limit bounds
//! nesting.
//!
//! ORT sessions are also told to resolve external data inside a folder that
//! cannot exist (`/dev/null`), so a file reference the screen missed still
//! reaches nothing (defence in depth).

use prost::Message;

/// Why a model was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScreenError {
    /// The bytes are not an ONNX `ModelProto`.
    #[error("not an ONNX model: {0}")]
    NotOnnx(String),
    /// A tensor keeps its data in a file.
    #[error(
        "tensor '{tensor}' ({place}) keeps its data in an external file; models run by mote must carry \
         their weights inline (onnx.save(model, path, save_as_external_data=False))"
    )]
    ExternalData {
        /// The tensor's name.
        tensor: String,
        /// Where in the model it is.
        place: String,
    },
    /// A node type that reads files by name.
    #[error("node '{node}' is an EPContext node, which names a file of precompiled code; mote does not load those")]
    EpContext {
        /// The node's name.
        node: String,
    },
    /// The model asks to configure the session that runs it.
    #[error("the model's metadata carries 'ort_config' (session options); mote does not let models configure sessions")]
    SessionConfig,
}

/// What the screen learnt of a model it passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Screened {
    /// Nodes in the model: main graph, subgraphs and functions.
    pub nodes: usize,
}

/// Checks that `bytes` is an ONNX model that names no file; counts its
/// nodes.
pub fn screen(bytes: &[u8]) -> Result<Screened, ScreenError> {
    let model = Model::decode(bytes).map_err(|e| ScreenError::NotOnnx(e.to_string()))?;
    let nodes = model.graph.iter().map(count_nodes).sum::<usize>()
        + model.functions.iter().map(|f| f.node.iter().map(count_in_node).sum::<usize>()).sum::<usize>()
        + model.training_info.iter().flat_map(|t| t.initialization.iter().chain(&t.algorithm)).map(count_nodes).sum::<usize>();
    if model.metadata_props.iter().any(|p| p.key == "ort_config") {
        return Err(ScreenError::SessionConfig);
    }
    if let Some(g) = &model.graph {
        graph(g, "graph")?;
    }
    for f in &model.functions {
        for n in &f.node {
            node(n, &format!("function '{}'", f.name))?;
        }
    }
    for (i, t) in model.training_info.iter().enumerate() {
        for g in t.initialization.iter().chain(&t.algorithm) {
            graph(g, &format!("training_info[{i}]"))?;
        }
    }
    Ok(Screened { nodes })
}

fn count_nodes(g: &Graph) -> usize {
    g.node.iter().map(count_in_node).sum()
}

/// A node and the nodes of its subgraphs.
fn count_in_node(n: &Node) -> usize {
    1 + n.attribute.iter().flat_map(|a| a.g.iter().chain(&a.graphs)).map(count_nodes).sum::<usize>()
}

fn graph(g: &Graph, place: &str) -> Result<(), ScreenError> {
    for t in &g.initializer {
        tensor(t, &format!("{place} initializer"))?;
    }
    for s in &g.sparse_initializer {
        sparse(s, &format!("{place} sparse initializer"))?;
    }
    for n in &g.node {
        node(n, place)?;
    }
    Ok(())
}

fn node(n: &Node, place: &str) -> Result<(), ScreenError> {
    if n.op_type == "EPContext" {
        return Err(ScreenError::EpContext { node: n.name.clone() });
    }
    for a in &n.attribute {
        let at = format!("{place}, node '{}' attribute '{}'", n.name, a.name);
        for t in a.t.iter().chain(&a.tensors) {
            tensor(t, &at)?;
        }
        for s in a.sparse_tensor.iter().chain(&a.sparse_tensors) {
            sparse(s, &at)?;
        }
        for g in a.g.iter().chain(&a.graphs) {
            graph(g, &at)?;
        }
    }
    Ok(())
}

fn sparse(s: &SparseTensor, place: &str) -> Result<(), ScreenError> {
    for t in s.values.iter().chain(&s.indices) {
        tensor(t, place)?;
    }
    Ok(())
}

fn tensor(t: &Tensor, place: &str) -> Result<(), ScreenError> {
    // data_location 1 = EXTERNAL. Entries without it are refused too: what
    // a reader does with half-declared external data is its own choice.
    if t.data_location != 0 || !t.external_data.is_empty() {
        return Err(ScreenError::ExternalData { tensor: t.name.clone(), place: place.to_string() });
    }
    Ok(())
}

// The fields of onnx.proto where tensors, graphs and file names can appear,
// with the schema's own tag numbers; everything else is skipped on decode.

#[derive(Clone, PartialEq, prost::Message)]
struct Model {
    #[prost(message, optional, tag = "7")]
    graph: Option<Graph>,
    #[prost(message, repeated, tag = "14")]
    metadata_props: Vec<Entry>,
    #[prost(message, repeated, tag = "20")]
    training_info: Vec<TrainingInfo>,
    #[prost(message, repeated, tag = "25")]
    functions: Vec<Function>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TrainingInfo {
    #[prost(message, optional, tag = "1")]
    initialization: Option<Graph>,
    #[prost(message, optional, tag = "2")]
    algorithm: Option<Graph>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Function {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, repeated, tag = "7")]
    node: Vec<Node>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Graph {
    #[prost(message, repeated, tag = "1")]
    node: Vec<Node>,
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<Tensor>,
    #[prost(message, repeated, tag = "15")]
    sparse_initializer: Vec<SparseTensor>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Node {
    #[prost(string, tag = "3")]
    name: String,
    #[prost(string, tag = "4")]
    op_type: String,
    #[prost(message, repeated, tag = "5")]
    attribute: Vec<Attribute>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Attribute {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "5")]
    t: Option<Tensor>,
    #[prost(message, optional, tag = "6")]
    g: Option<Graph>,
    #[prost(message, repeated, tag = "10")]
    tensors: Vec<Tensor>,
    #[prost(message, repeated, tag = "11")]
    graphs: Vec<Graph>,
    #[prost(message, optional, tag = "22")]
    sparse_tensor: Option<SparseTensor>,
    #[prost(message, repeated, tag = "23")]
    sparse_tensors: Vec<SparseTensor>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SparseTensor {
    #[prost(message, optional, tag = "1")]
    values: Option<Tensor>,
    #[prost(message, optional, tag = "2")]
    indices: Option<Tensor>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Tensor {
    #[prost(string, tag = "8")]
    name: String,
    #[prost(message, repeated, tag = "13")]
    external_data: Vec<Entry>,
    #[prost(int32, tag = "14")]
    data_location: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Entry {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(string, tag = "2")]
    value: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx_proto as pb;

    #[test]
    fn external_data_is_refused_wherever_it_hides() {
        let top = screen(&crate::attack_models::external_data_model("mote.toml", 16)).unwrap_err();
        assert!(matches!(&top, ScreenError::ExternalData { tensor, .. } if tensor == "secret"), "{top}");
        assert!(top.to_string().contains("save_as_external_data=False"), "{top}");
        let nested = screen(&crate::attack_models::nested_external_data_model("node.key", 64)).unwrap_err();
        assert!(nested.to_string().contains("then_branch"), "{nested}");
    }

    #[test]
    fn files_named_by_functions_ep_context_and_metadata_are_refused() {
        let mut m = pb::ModelProto::decode(&crate::attack_models::external_data_model("x", 1)[..]).unwrap();
        let g = m.graph.take().unwrap();
        let t = g.initializer[0].clone();
        let mut inline = g.clone();
        inline.initializer[0].external_data.clear();
        inline.initializer[0].data_location = 0;
        inline.initializer[0].raw_data = vec![7];
        m.graph = Some(inline.clone());
        let clean = m.encode_to_vec();
        assert_eq!(screen(&clean).expect("an inline model passes").nodes, 1);
        assert_eq!(screen(&crate::attack_models::memory_bomb_model(8)).unwrap().nodes, 3);

        // A constant node's tensor attribute, inside a model-local function
        // (tag 25 of ModelProto: FunctionProto, its nodes at tag 7).
        let constant = pb::NodeProto {
            output: vec!["c".into()],
            op_type: "Constant".into(),
            attribute: vec![pb::AttributeProto {
                name: "value".into(),
                r#type: pb::attribute_type::TENSOR,
                t: Some(t),
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut bytes = clean.clone();
        let function = raw_field(7, &constant.encode_to_vec());
        bytes.extend(raw_field(25, &[raw_field(1, b"f"), function].concat()));
        assert!(matches!(screen(&bytes), Err(ScreenError::ExternalData { .. })), "function constant passed");

        let mut ep = inline.clone();
        ep.node[0].op_type = "EPContext".into();
        m.graph = Some(ep);
        assert!(matches!(screen(&m.encode_to_vec()), Err(ScreenError::EpContext { .. })));

        let mut with_config = clean.clone();
        with_config.extend(raw_field(14, &[raw_field(1, b"ort_config"), raw_field(2, b"{}")].concat()));
        assert_eq!(screen(&with_config), Err(ScreenError::SessionConfig));

        assert!(matches!(screen(b"not a model at all"), Err(ScreenError::NotOnnx(_))));
    }

    /// A length-delimited protobuf field.
    fn raw_field(tag: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, &mut out);
        prost::encoding::encode_varint(payload.len() as u64, &mut out);
        out.extend_from_slice(payload);
        out
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            #[test]
            fn screening_any_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
                let _ = screen(&bytes);
            }

            /// Cross-check with the other decoder (the full schema subset
            /// in onnx_proto, which the wgpu backend reads): whatever a
            /// corrupted attack model decodes to there, if it still names a
            /// file, the screen refuses it.
            #[test]
            fn corrupted_attack_models_never_pass_with_their_file(cut in 0usize..400, at in any::<prop::sample::Index>(), byte in any::<u8>()) {
                let mut m = crate::attack_models::nested_external_data_model("mote.toml", 16);
                let i = at.index(m.len());
                m[i] = byte;
                m.truncate(m.len().saturating_sub(cut));
                if let Ok(full) = crate::onnx_proto::ModelProto::decode(&m[..]) {
                    fn names_file(g: &crate::onnx_proto::GraphProto) -> bool {
                        g.initializer.iter().any(|t| t.data_location != 0 || !t.external_data.is_empty())
                            || g.node.iter().flat_map(|n| &n.attribute).flat_map(|a| a.g.iter().chain(&a.graphs)).any(names_file)
                    }
                    if full.graph.as_ref().is_some_and(names_file) {
                        prop_assert!(screen(&m).is_err(), "screen passed a model naming a file");
                    }
                }
            }
        }
    }
}
