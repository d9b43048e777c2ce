//! The JSON output is a contract, written down in `schema/` (JSON Schema, draft 2020-12): what
//! `list --format json` and `watch --format json` print must validate, and the README must
//! document every field the schemas name.

use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::UnixListener;
use std::sync::OnceLock;

use crate::util::{json_list, private_dir};

const BASE: &str = "https://github.com/portwatch/portwatch/schema/";
const FILES: [&str; 3] = ["socket.schema.json", "event.schema.json", "list.schema.json"];

fn schema_file(name: &str) -> serde_json::Value {
    let path = format!("{}/schema/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
}

/// The compiled schemas, by file name.
struct Compiled {
    schemas: boon::Schemas,
    index: std::collections::HashMap<&'static str, boon::SchemaIndex>,
}

fn compiled() -> &'static Compiled {
    static COMPILED: OnceLock<Compiled> = OnceLock::new();
    COMPILED.get_or_init(|| {
        let mut compiler = boon::Compiler::new();
        for name in FILES {
            compiler.add_resource(&format!("{BASE}{name}"), schema_file(name)).unwrap();
        }
        let mut schemas = boon::Schemas::new();
        let index = FILES
            .iter()
            .map(|name| {
                let i = compiler
                    .compile(&format!("{BASE}{name}"), &mut schemas)
                    .unwrap_or_else(|e| panic!("{name} is not a valid schema: {e:#}"));
                (*name, i)
            })
            .collect();
        Compiled { schemas, index }
    })
}

/// Whether `value` validates against schema file `name`; the error says where it did not.
fn validate(name: &str, value: &serde_json::Value) -> Result<(), String> {
    let c = compiled();
    c.schemas.validate(value, c.index[name]).map_err(|e| format!("{e:#}"))
}

/// Panics, showing the line and why, unless `line` is a valid `watch --format json` line.
pub fn assert_event_line(line: &str) {
    let value: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}"));
    if let Err(e) = validate("event.schema.json", &value) {
        panic!("watch line does not match schema/event.schema.json: {e}\n{line}");
    }
}

#[test]
fn list_output_matches_the_schema() {
    // Sockets of every kind the output can describe: listeners, connected TCP (a peer), UDP,
    // IPv6 wildcard, unix path and abstract names.
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let _client = TcpStream::connect(tcp.local_addr().unwrap()).unwrap();
    let _server = tcp.accept().unwrap();
    let _udp = UdpSocket::bind("[::]:0").unwrap();
    let dir = private_dir();
    let _unix = UnixListener::bind(dir.path().join("s")).unwrap();
    let list = json_list(&["-t", "-u", "-x", "--state", "all"]);
    assert!(list.len() >= 4, "{list:?}");
    let array = serde_json::Value::Array(list.clone());
    if let Err(e) = validate("list.schema.json", &array) {
        panic!("list --format json does not match schema/list.schema.json: {e}");
    }
    for s in &list {
        validate("socket.schema.json", s).unwrap_or_else(|e| panic!("{e}\n{s}"));
    }
    // Without owners the objects keep their shape.
    let bare = json_list(&["--no-processes"]);
    validate("list.schema.json", &serde_json::Value::Array(bare)).unwrap();
}

/// What the schemas refuse: they are checked, not decoration.
#[test]
fn the_schemas_refuse_what_the_output_never_holds() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let list = json_list(&["--port", &port.to_string()]);
    let socket = list.iter().find(|s| s["port"] == port).unwrap().clone();
    validate("socket.schema.json", &socket).unwrap();
    let with = |key: &str, value: serde_json::Value| {
        let mut s = socket.clone();
        s[key] = value;
        s
    };
    assert!(validate("socket.schema.json", &with("surprise", 1.into())).is_err());
    assert!(validate("socket.schema.json", &with("proto", "sctp".into())).is_err());
    assert!(validate("socket.schema.json", &with("port", 70000.into())).is_err());
    let mut missing = socket.clone();
    missing.as_object_mut().unwrap().remove("netns_name");
    assert!(validate("socket.schema.json", &missing).is_err());

    // An event line: the socket plus ts, reported, event, initial and source (two values).
    let mut event = socket.clone();
    event["ts"] = "2026-11-22T04:09:51.076Z".into();
    event["reported"] = "2026-11-22T04:09:51.276Z".into();
    event["event"] = "open".into();
    event["initial"] = false.into();
    event["source"] = "ebpf".into();
    validate("event.schema.json", &event).unwrap();
    for key in ["reported", "source"] {
        let mut e = event.clone();
        e.as_object_mut().unwrap().remove(key);
        assert!(validate("event.schema.json", &e).is_err(), "{key} is required");
    }
    for (key, value, ok) in [
        ("source", serde_json::json!("ebpf"), true),
        ("source", serde_json::json!("scan"), true),
        ("source", serde_json::json!("guess"), false),
        ("surprise", serde_json::json!(1), false),
        ("ts", serde_json::json!("yesterday"), false),
        // Only owner changes name who held the socket before.
        ("previous_pids", serde_json::json!([1]), false),
    ] {
        let mut e = event.clone();
        e[key] = value.clone();
        assert_eq!(validate("event.schema.json", &e).is_ok(), ok, "{key}: {value}");
    }
    let mut owners = event.clone();
    owners["event"] = "owners".into();
    assert!(validate("event.schema.json", &owners).is_err(), "owners needs previous_pids");
    owners["previous_pids"] = serde_json::json!([1, 2]);
    validate("event.schema.json", &owners).unwrap();
}

/// Every field a schema names, in schema/ order.
fn schema_fields() -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::Object(props)) = map.get("properties") {
                    for key in props.keys() {
                        if !out.contains(key) {
                            out.push(key.clone());
                        }
                    }
                }
                map.values().for_each(|v| walk(v, out));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for name in FILES {
        walk(&schema_file(name), &mut out);
    }
    out
}

#[test]
fn the_readme_documents_every_field() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let fields = schema_fields();
    assert!(fields.len() > 25, "{fields:?}");
    let missing: Vec<&String> =
        fields.iter().filter(|f| !readme.contains(&format!("`{f}`"))).collect();
    assert!(missing.is_empty(), "fields the README does not document: {missing:?}");
}

#[test]
fn every_owner_unknown_reason_is_in_the_schema() {
    use portwatch_core::UnknownReason;
    let schema = schema_file("socket.schema.json");
    let text = schema.to_string();
    for r in [
        UnknownReason::NotResolved,
        UnknownReason::PermissionDenied { unreadable: 1 },
        UnknownReason::NotFound,
        UnknownReason::Skipped { crowded: 1, unread: 1 },
        UnknownReason::Hidden,
    ] {
        assert!(text.contains(&format!("\"{}\"", r.code())), "{} is not in the schema", r.code());
    }
}
