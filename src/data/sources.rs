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

/// Reads every record of `file`, sending unreadable ones to `bad`.
pub fn read_file(
    file: &Path,
    records: &mut Vec<RawRecord>,
    bad: &mut Vec<BadRecord>,
) -> Result<()> {
    let name = file.display().to_string();
    match file.extension().and_then(|e| e.to_str()) {
        Some("txt") => {
            let text = std::fs::read_to_string(file).with_context(|| format!("reading {name}"))?;
            records.push(RawRecord {
                origin: name,
                value: serde_json::json!({ "text": text }),
            });
        }
        Some("jsonl") => {
            let f = std::fs::File::open(file).with_context(|| format!("opening {name}"))?;
            for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
                let origin = format!("{name}:{}", i + 1);
                let line = line.with_context(|| format!("reading {origin}"))?;
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
                row = push_batch(&name, &batch, row, records)?;
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
                            records,
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
                            records,
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
    out: &mut Vec<RawRecord>,
) -> Result<usize> {
    let schema = batch.schema();
    for r in 0..batch.num_rows() {
        let mut obj = Map::new();
        for (field, col) in schema.fields().iter().zip(batch.columns()) {
            obj.insert(field.name().clone(), cell(col.as_ref(), r));
        }
        out.push(RawRecord {
            origin: format!("{name}:row {}", start + r),
            value: Value::Object(obj),
        });
    }
    Ok(start + batch.num_rows())
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
