//! Raw data sources → records. A source is a file (`*.jsonl`, `*.parquet`, `*.txt`) or a folder
//! of them, or a Hugging Face `datasets` save folder (`dataset_info.json` + `*.arrow`). Every
//! record keeps where it came from (`file:line` or `file:row`) for error messages.

use anyhow::{Context, Result, bail};
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use serde_json::{Map, Value};
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// One raw record: a JSON object (text files become `{"text": ...}`).
#[derive(Debug, Clone)]
pub struct RawRecord {
    /// `file:line` (JSONL, 1-based) or `file:row` (Parquet/Arrow, 0-based) or `file` (text).
    pub origin: String,
    pub value: Value,
}

/// A record that could not be read, with its origin.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BadRecord {
    pub origin: String,
    pub reason: String,
}

/// Files of a source, in a stable order, and whether they form a `datasets` save folder.
pub fn source_files(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    if !path.is_dir() {
        bail!("data source {} does not exist", path.display());
    }
    let mut files = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?
        {
            let p = entry?.path();
            if p.is_dir() {
                stack.push(p);
            } else if matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("jsonl" | "parquet" | "txt" | "arrow")
            ) {
                files.push(p);
            }
        }
    }
    files.sort();
    if files.is_empty() {
        bail!(
            "{} holds no *.jsonl, *.parquet, *.txt or *.arrow files",
            path.display()
        );
    }
    Ok(files)
}

/// Default largest record, in bytes: a whole book fits; one runaway line does not take the
/// process down (tokenising a record needs many times its size in memory).
pub const DEFAULT_MAX_RECORD_BYTES: usize = 16 << 20;

/// Why a record of `bytes` is skipped.
fn too_large(bytes: u64, max_record_bytes: usize) -> String {
    format!("record too large: {bytes} bytes (more than max_record_bytes = {max_record_bytes})")
}

/// One line of a JSON Lines file, read without ever holding more than `max` bytes of it.
enum Line {
    Text(String),
    TooLong(u64),
    NotUtf8,
}

/// Reads the next line (without its `\n`); `None` at the end of the input.
fn next_line(reader: &mut impl BufRead, max: usize) -> std::io::Result<Option<Line>> {
    let mut buf: Vec<u8> = Vec::new();
    let mut total: u64 = 0;
    let mut seen_any = false;
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            break;
        }
        seen_any = true;
        let (part, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], Some(i + 1)),
            None => (chunk, None),
        };
        total += part.len() as u64;
        if total as usize <= max {
            buf.extend_from_slice(part);
        } else {
            buf = Vec::new();
        }
        let used = done.unwrap_or(part.len());
        reader.consume(used);
        if done.is_some() {
            break;
        }
    }
    if !seen_any {
        return Ok(None);
    }
    if total as usize > max {
        return Ok(Some(Line::TooLong(total)));
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(Some(match String::from_utf8(buf) {
        Ok(s) => Line::Text(s),
        Err(_) => Line::NotUtf8,
    }))
}

/// Reads every record of `file`, sending unreadable ones (malformed, not UTF-8, larger than
/// `max_record_bytes`) to `bad` with their file and line or row.
pub fn read_file(
    file: &Path,
    max_record_bytes: usize,
    records: &mut Vec<RawRecord>,
    bad: &mut Vec<BadRecord>,
) -> Result<()> {
    let name = file.display().to_string();
    let too_large = |bytes: u64| too_large(bytes, max_record_bytes);
    match file.extension().and_then(|e| e.to_str()) {
        Some("txt") => {
            let bytes = std::fs::metadata(file)
                .with_context(|| format!("reading {name}"))?
                .len();
            if bytes as usize > max_record_bytes {
                bad.push(BadRecord {
                    origin: name,
                    reason: too_large(bytes),
                });
                return Ok(());
            }
            let raw = std::fs::read(file).with_context(|| format!("reading {name}"))?;
            match String::from_utf8(raw) {
                Ok(text) => records.push(RawRecord {
                    origin: name,
                    value: serde_json::json!({ "text": text }),
                }),
                Err(e) => bad.push(BadRecord {
                    origin: name,
                    reason: format!("not UTF-8 text: {}", e.utf8_error()),
                }),
            }
        }
        Some("jsonl") => {
            let f = std::fs::File::open(file).with_context(|| format!("opening {name}"))?;
            let mut reader = std::io::BufReader::new(f);
            let mut i = 0usize;
            while let Some(line) = next_line(&mut reader, max_record_bytes)
                .with_context(|| format!("reading {name}"))?
            {
                i += 1;
                let origin = format!("{name}:{i}");
                let line = match line {
                    Line::Text(t) => t,
                    Line::TooLong(bytes) => {
                        bad.push(BadRecord {
                            origin,
                            reason: too_large(bytes),
                        });
                        continue;
                    }
                    Line::NotUtf8 => {
                        bad.push(BadRecord {
                            origin,
                            reason: "not UTF-8 text".into(),
                        });
                        continue;
                    }
                };
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<Value>(&line) {
                    Ok(value @ Value::Object(_)) => records.push(RawRecord { origin, value }),
                    Ok(_) => bad.push(BadRecord {
                        origin,
                        reason: "the line is JSON but not an object".into(),
                    }),
                    Err(e) => bad.push(BadRecord {
                        origin,
                        reason: format!("malformed JSON: {e}"),
                    }),
                }
            }
        }
        Some("parquet") => {
            let f = std::fs::File::open(file).with_context(|| format!("opening {name}"))?;
            let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
                .with_context(|| format!("{name} is not a readable Parquet file"))?
                .build()?;
            let mut row = 0;
            for batch in reader {
                let batch = batch.with_context(|| format!("reading {name}"))?;
                row = push_batch(&name, &batch, row, max_record_bytes, records, bad)?;
            }
        }
        Some("arrow") => {
            let f = std::fs::File::open(file).with_context(|| format!("opening {name}"))?;
            // `datasets` writes the IPC stream format; plain IPC files are accepted too.
            let mut row = 0;
            match arrow::ipc::reader::StreamReader::try_new(std::io::BufReader::new(f), None) {
                Ok(reader) => {
                    for batch in reader {
                        row = push_batch(
                            &name,
                            &batch.with_context(|| format!("reading {name}"))?,
                            row,
                            max_record_bytes,
                            records,
                            bad,
                        )?;
                    }
                }
                Err(_) => {
                    let f = std::fs::File::open(file)?;
                    let reader = arrow::ipc::reader::FileReader::try_new(f, None)
                        .with_context(|| format!("{name} is not an Arrow IPC stream or file"))?;
                    for batch in reader {
                        row = push_batch(
                            &name,
                            &batch.with_context(|| format!("reading {name}"))?,
                            row,
                            max_record_bytes,
                            records,
                            bad,
                        )?;
                    }
                }
            }
        }
        _ => bail!("{name}: unsupported file type (expected .jsonl, .parquet, .txt or .arrow)"),
    }
    Ok(())
}

fn push_batch(
    name: &str,
    batch: &RecordBatch,
    start: usize,
    max_record_bytes: usize,
    out: &mut Vec<RawRecord>,
    bad: &mut Vec<BadRecord>,
) -> Result<usize> {
    let schema = batch.schema();
    for r in 0..batch.num_rows() {
        let origin = format!("{name}:row {}", start + r);
        let bytes: usize = batch
            .columns()
            .iter()
            .map(|c| cell_bytes(c.as_ref(), r))
            .sum();
        if bytes > max_record_bytes {
            bad.push(BadRecord {
                origin,
                reason: too_large(bytes as u64, max_record_bytes),
            });
            continue;
        }
        let mut obj = Map::new();
        for (field, col) in schema.fields().iter().zip(batch.columns()) {
            obj.insert(field.name().clone(), cell(col.as_ref(), r));
        }
        out.push(RawRecord {
            origin,
            value: Value::Object(obj),
        });
    }
    Ok(start + batch.num_rows())
}

/// Bytes of one cell's data (strings and nested values), measured before it is copied out.
fn cell_bytes(col: &dyn Array, i: usize) -> usize {
    if col.is_null(i) {
        return 0;
    }
    match col.data_type() {
        DataType::Utf8 => col.as_string::<i32>().value(i).len(),
        DataType::LargeUtf8 => col.as_string::<i64>().value(i).len(),
        DataType::Utf8View => col.as_string_view().value(i).len(),
        DataType::List(_) => {
            let items = col.as_list::<i32>().value(i);
            (0..items.len())
                .map(|j| cell_bytes(items.as_ref(), j))
                .sum()
        }
        DataType::LargeList(_) => {
            let items = col.as_list::<i64>().value(i);
            (0..items.len())
                .map(|j| cell_bytes(items.as_ref(), j))
                .sum()
        }
        DataType::Struct(_) => col
            .as_struct()
            .columns()
            .iter()
            .map(|c| cell_bytes(c.as_ref(), i))
            .sum(),
        _ => 8,
    }
}

/// One Arrow cell as JSON (strings, numbers, booleans, lists and structs; other types as null).
fn cell(col: &dyn Array, i: usize) -> Value {
    if col.is_null(i) {
        return Value::Null;
    }
    match col.data_type() {
        DataType::Utf8 => Value::String(col.as_string::<i32>().value(i).to_string()),
        DataType::LargeUtf8 => Value::String(col.as_string::<i64>().value(i).to_string()),
        DataType::Utf8View => Value::String(col.as_string_view().value(i).to_string()),
        DataType::Boolean => Value::Bool(col.as_boolean().value(i)),
        DataType::Int64 => Value::from(col.as_primitive::<arrow::datatypes::Int64Type>().value(i)),
        DataType::Int32 => Value::from(col.as_primitive::<arrow::datatypes::Int32Type>().value(i)),
        DataType::UInt32 => {
            Value::from(col.as_primitive::<arrow::datatypes::UInt32Type>().value(i))
        }
        DataType::Float64 => {
            Value::from(col.as_primitive::<arrow::datatypes::Float64Type>().value(i))
        }
        DataType::Float32 => {
            Value::from(col.as_primitive::<arrow::datatypes::Float32Type>().value(i) as f64)
        }
        DataType::List(_) => {
            let items = col.as_list::<i32>().value(i);
            Value::Array((0..items.len()).map(|j| cell(items.as_ref(), j)).collect())
        }
        DataType::LargeList(_) => {
            let items = col.as_list::<i64>().value(i);
            Value::Array((0..items.len()).map(|j| cell(items.as_ref(), j)).collect())
        }
        DataType::Struct(fields) => {
            let s = col.as_struct();
            Value::Object(
                fields
                    .iter()
                    .zip(s.columns())
                    .map(|(f, c)| (f.name().clone(), cell(c.as_ref(), i)))
                    .collect(),
            )
        }
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_and_non_utf8_lines_are_bad_records_with_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("d.jsonl");
        let mut bytes = Vec::new();
        bytes.extend_from_slice(b"{\"text\": \"ok one\"}\n");
        bytes.extend_from_slice(format!("{{\"text\": \"{}\"}}\n", "x".repeat(5000)).as_bytes());
        bytes.extend_from_slice(b"{\"text\": \"caf\xe9\"}\n");
        bytes.extend_from_slice(b"{\"text\": \"ok two\"}\r\n");
        bytes.extend_from_slice(b"{\"text\": \"no newline at the end\"}");
        std::fs::write(&f, bytes).unwrap();
        let (mut records, mut bad) = (Vec::new(), Vec::new());
        read_file(&f, 1000, &mut records, &mut bad).unwrap();
        let texts: Vec<&str> = records
            .iter()
            .map(|r| r.value["text"].as_str().unwrap())
            .collect();
        assert_eq!(texts, ["ok one", "ok two", "no newline at the end"]);
        assert!(
            records[1].origin.ends_with("d.jsonl:4"),
            "{}",
            records[1].origin
        );
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert!(
            bad[0].origin.ends_with(":2") && bad[0].reason.contains("too large"),
            "{bad:?}"
        );
        assert!(
            bad[1].origin.ends_with(":3") && bad[1].reason.contains("UTF-8"),
            "{bad:?}"
        );
    }

    #[test]
    fn a_text_file_over_the_limit_is_skipped_unread() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("big.txt");
        std::fs::write(&f, "y".repeat(2000)).unwrap();
        let (mut records, mut bad) = (Vec::new(), Vec::new());
        read_file(&f, 1000, &mut records, &mut bad).unwrap();
        assert!(records.is_empty());
        assert!(bad[0].reason.contains("2000 bytes"), "{bad:?}");
    }
}
