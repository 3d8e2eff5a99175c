//! The `tokenize` step end to end on the tiny model's byte-level tokenizer: text, chat,
//! Parquet and `.txt` sources; bad records reported with file and line/row and skipped or fatal;
//! shards that decode back to the input texts; the loader reading them.

mod common;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use common::Project;
use common::python::tiny_qwen2;
use rwkvinside::data::loader::{BatchLength, Loader};
use rwkvinside::data::shards::{read_manifest, read_split};
use rwkvinside::text::TextTokenizer;
use std::sync::Arc;

fn parquet(path: &std::path::Path, column: &str, values: &[&str]) {
    let schema = Arc::new(Schema::new(vec![Field::new(column, DataType::Utf8, false)]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(StringArray::from(values.to_vec()))],
    )
    .unwrap();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None)
            .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// A Hugging Face `datasets` save folder: an Arrow IPC stream with a `messages` column.
fn datasets_dir(dir: &std::path::Path) {
    use arrow::array::{Array, ListBuilder, StringBuilder, StructBuilder};
    use arrow::datatypes::Fields;
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("dataset_info.json"), "{}").unwrap();
    let fields = Fields::from(vec![
        Field::new("role", DataType::Utf8, true),
        Field::new("content", DataType::Utf8, true),
    ]);
    let mut list = ListBuilder::new(StructBuilder::from_fields(fields.clone(), 2));
    for (role, content) in [("user", "Name a color."), ("assistant", "Blue.")] {
        let s = list.values();
        s.field_builder::<StringBuilder>(0)
            .unwrap()
            .append_value(role);
        s.field_builder::<StringBuilder>(1)
            .unwrap()
            .append_value(content);
        s.append(true);
    }
    list.append(true);
    let col = list.finish();
    let schema = Arc::new(Schema::new(vec![Field::new(
        "messages",
        col.data_type().clone(),
        true,
    )]));
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(col)]).unwrap();
    let f = std::fs::File::create(dir.join("data-00000-of-00001.arrow")).unwrap();
    let mut w = arrow::ipc::writer::StreamWriter::try_new(f, &schema).unwrap();
    w.write(&batch).unwrap();
    w.finish().unwrap();
}

const TEXTS: [&str; 3] = [
    "To be, or not to be: that is the question.",
    "Héllo wörld — ünïcode ✓",
    "third\nline two",
];

fn project() -> Project {
    let p = Project::new();
    tiny_qwen2(&p.path().join("tiny"), &[]);
    let mut jsonl = String::new();
    for t in TEXTS {
        jsonl.push_str(&serde_json::json!({ "text": t }).to_string());
        jsonl.push('\n');
    }
    jsonl.push_str("{\"text\": \"broken\"\n");
    jsonl.push_str("{\"title\": \"no text here\"}\n");
    jsonl.push_str(
        &serde_json::json!({"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]})
            .to_string(),
    );
    jsonl.push('\n');
    p.write("data/a.jsonl", &jsonl);
    p.write("data/b.txt", "A plain text file.\n");
    std::fs::create_dir_all(p.path().join("data/pq")).unwrap();
    parquet(
        &p.path().join("data/pq/c.parquet"),
        "text",
        &["from parquet one", "from parquet two"],
    );
    parquet(
        &p.path().join("data/pq/d.parquet"),
        "body",
        &["wrong schema"],
    );
    datasets_dir(&p.path().join("data/hf"));
    p
}

fn pipeline(extra: &str) -> String {
    format!(
        "[pipeline]\nseed = 3\n\n[[step]]\nid = \"tok\"\nkind = \"tokenize\"\ntokenizer = \"tiny\"\n\
         inputs = [\"data\"]\nmax_seq_len = 4096\nheldout = 0.0\n{extra}"
    )
}

#[test]
fn shards_decode_back_to_the_texts_and_bad_records_are_listed() {
    let p = project();
    p.write("p.toml", &pipeline(""));
    let r = p.run(&["run", "p.toml"]).ok();
    assert!(
        r.stderr.contains("a.jsonl:4") && r.stderr.contains("malformed JSON"),
        "{}",
        r.stderr
    );
    let out = p.runs("p").pop().unwrap().join("tok/out");
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("stats.json")).unwrap()).unwrap();
    assert_eq!(stats["skipped"], 3, "{stats}");
    assert_eq!(
        stats["chat_documents"], 2,
        "one JSONL chat, one from the datasets folder"
    );
    assert_eq!(stats["text_documents"], 6);
    let examples = stats["skipped_examples"].to_string();
    assert!(
        examples.contains("a.jsonl:5") && examples.contains("keys: title"),
        "{examples}"
    );
    assert!(
        examples.contains("d.parquet:row 0") && examples.contains("keys: body"),
        "{examples}"
    );

    let manifest = read_manifest(&out).unwrap();
    let seqs = read_split(&out, &manifest, "train").unwrap();
    let tok = TextTokenizer::from_dir(&p.path().join("tiny")).unwrap();
    let decoded: Vec<String> = seqs
        .iter()
        .map(|s| tok.decode(&s.ids, false).unwrap())
        .collect();
    for t in TEXTS
        .iter()
        .chain(&["from parquet one", "A plain text file.\n"])
    {
        assert!(
            decoded.contains(&format!("{t}<|im_end|>")),
            "{t:?} not in {decoded:?}"
        );
    }
    let chat = seqs
        .iter()
        .find(|s| s.loss_mask.contains(&0))
        .expect("the chat record");
    let trained: Vec<u32> = chat
        .ids
        .iter()
        .zip(&chat.loss_mask)
        .filter(|(_, m)| **m == 1)
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(tok.decode(&trained, false).unwrap(), "4<|im_end|>");
    let arrow_chat = decoded
        .iter()
        .find(|d| d.contains("Name a color."))
        .expect("the datasets record");
    assert!(
        arrow_chat.ends_with("<|im_start|>assistant\nBlue.<|im_end|>\n"),
        "{arrow_chat:?}"
    );

    // The loader serves the same sequences, padded.
    let (mut loader, _) = Loader::open(&out, "train", 2, BatchLength::Bucket(8), 1).unwrap();
    let b = loader.next_batch();
    assert_eq!(b.ids.len(), 2);
    assert_eq!(b.ids[0].len() % 8, 0);
}

#[test]
fn on_error_fail_stops_at_the_first_bad_record() {
    let p = project();
    p.write("p.toml", &pipeline("on_error = \"fail\"\n"));
    let r = p.run(&["run", "p.toml"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("a.jsonl:4: malformed JSON") && r.stderr.contains("on_error = \"skip\""),
        "{}",
        r.stderr
    );
}

#[test]
fn packing_heldout_and_empty_inputs() {
    let p = project();
    p.write(
        "p.toml",
        &pipeline("pack = true\n").replace(
            "max_seq_len = 4096\nheldout = 0.0",
            "max_seq_len = 16\nheldout = 0.3",
        ),
    );
    p.run(&["run", "p.toml"]).ok();
    let out = p.runs("p").pop().unwrap().join("tok/out");
    let m = read_manifest(&out).unwrap();
    let train = read_split(&out, &m, "train").unwrap();
    assert!(train[..train.len() - 1].iter().all(|s| s.ids.len() == 16));
    assert!(m.splits["heldout"].documents >= 1);
    assert_eq!(
        m.splits["heldout"].documents + m.splits["train"].documents,
        8
    );

    std::fs::create_dir_all(p.path().join("empty")).unwrap();
    p.write("e.toml", &pipeline("").replace("[\"data\"]", "[\"empty\"]"));
    let r = p.run(&["run", "e.toml"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("empty holds no"), "{}", r.stderr);
}
