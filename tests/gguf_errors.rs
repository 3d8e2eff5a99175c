//! GGUF files that cannot be imported fail with a message naming the problem: an unsupported
//! tensor type, a truncated file, something that is not GGUF at all.

use rwkvinside::gguf::GgufFile;
use rwkvinside::gguf::import::import_gguf;
use rwkvinside::model::safetensors_io::SaveDtype;

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// A minimal GGUF v3: `general.architecture = llama` and the given tensors (name, dims, type,
/// data bytes).
fn gguf(tensors: &[(&str, Vec<u64>, u32, Vec<u8>)]) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend(1u64.to_le_bytes());
    string(&mut out, "general.architecture");
    out.extend(8u32.to_le_bytes());
    string(&mut out, "llama");
    let mut offset = 0u64;
    for (name, dims, ty, data) in tensors {
        string(&mut out, name);
        out.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            out.extend(d.to_le_bytes());
        }
        out.extend(ty.to_le_bytes());
        out.extend(offset.to_le_bytes());
        offset += (data.len() as u64).div_ceil(32) * 32;
    }
    while !out.len().is_multiple_of(32) {
        out.push(0);
    }
    for (_, _, _, data) in tensors {
        out.extend(data);
        while !out.len().is_multiple_of(32) {
            out.push(0);
        }
    }
    out
}

#[test]
fn reads_metadata_and_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    std::fs::write(&path, gguf(&[("token_embd.weight", vec![3, 2], 0, data)])).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(
        f.get("general.architecture").unwrap().as_str(),
        Some("llama")
    );
    let t = f.tensor("token_embd.weight").unwrap();
    assert_eq!(t.shape(), vec![2, 3]);
    assert_eq!(f.read_f32(t).unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
}

#[test]
fn unsupported_tensor_type_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q6k.gguf");
    // Q6_K (14): 256 values per 210-byte block.
    std::fs::write(
        &path,
        gguf(&[("blk.0.ffn_down.weight", vec![256, 1], 14, vec![0; 210])]),
    )
    .unwrap();
    let err = format!(
        "{:#}",
        import_gguf(&path, &dir.path().join("out"), SaveDtype::F32)
            .err()
            .unwrap()
    );
    assert!(
        err.contains("Q6_K") && err.contains("blk.0.ffn_down.weight") && err.contains("supported"),
        "{err}"
    );
    assert!(!dir.path().join("out/model.safetensors").exists());
}

#[test]
fn truncated_and_foreign_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.gguf");
    let data: Vec<u8> = vec![0; 4 * 64];
    let mut bytes = gguf(&[("token_embd.weight", vec![8, 8], 0, data)]);
    bytes.truncate(bytes.len() - 100);
    std::fs::write(&path, &bytes).unwrap();
    let err = format!("{:#}", GgufFile::open(&path).err().unwrap());
    assert!(err.contains("truncated"), "{err}");
    std::fs::write(&path, &bytes[..20]).unwrap();
    let err = format!("{:#}", GgufFile::open(&path).err().unwrap());
    assert!(
        err.contains("truncated") || err.contains("ends at byte"),
        "{err}"
    );
    std::fs::write(&path, b"PK\x03\x04 not a gguf").unwrap();
    let err = format!("{:#}", GgufFile::open(&path).err().unwrap());
    assert!(err.contains("not a GGUF file"), "{err}");
}
