//! GGUF files, llama.cpp's model format (v2 and v3, little-endian): a header, typed key-value metadata, tensor
//! infos, then the aligned tensor data, memory-mapped here and never copied. Sharded models
//! (`<prefix>-00001-of-0000N.gguf`) are opened from any shard; only the first carries the metadata. Every
//! count, length and offset is checked against the file, so a truncated or corrupt file is a one-line error.
//!
//! Shapes are given row-major as PyTorch writes them: GGUF stores `ne` innermost first, so it is reversed
//! (an `nn.Linear` weight [out, in] is `ne = [in, out]`; each row is a run of whole blocks).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use crate::bail;
use crate::error::{Result, ResultExt};
use crate::quant::BlockFormat;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// An integer of any width and sign, when it is one and is not negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
}

/// Where a tensor's data lies and how it is stored.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// Row-major dims (GGUF's `ne` reversed).
    pub shape: Vec<usize>,
    pub format: BlockFormat,
    /// Which shard holds it, and the byte range of its data in that shard.
    pub shard: usize,
    pub start: usize,
    pub len: usize,
}

pub struct GgufFile {
    shards: Vec<(PathBuf, Arc<Mmap>)>,
    metadata: BTreeMap<String, Value>,
    tensors: BTreeMap<String, TensorInfo>,
}

impl GgufFile {
    /// Opens a GGUF file, or every shard of a sharded model given any one of them.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let paths = shard_paths(path)?;
        let mut file = GgufFile {
            shards: Vec::with_capacity(paths.len()),
            metadata: BTreeMap::new(),
            tensors: BTreeMap::new(),
        };
        for (i, p) in paths.iter().enumerate() {
            let handle = File::open(p).with_context(|| format!("opening {}", p.display()))?;
            // SAFETY: the file is only read; a file modified while mapped is outside what we can defend against.
            let mmap = unsafe { Mmap::map(&handle) }.with_context(|| format!("mapping {}", p.display()))?;
            let (metadata, tensors) =
                parse(&mmap, i).with_context(|| format!("{} is not a valid GGUF file", p.display()))?;
            for (name, info) in tensors {
                if file.tensors.insert(name.clone(), info).is_some() {
                    bail!("{}: tensor `{name}` appears in two shards", p.display());
                }
            }
            if i == 0 {
                file.metadata = metadata;
            }
            file.shards.push((p.clone(), Arc::new(mmap)));
        }
        if let Some(total) = file.metadata.get("split.tensors.count").and_then(Value::as_u64) {
            if total as usize != file.tensors.len() {
                bail!(
                    "{}: the shards hold {} tensors, split.tensors.count says {total}",
                    path.display(),
                    file.tensors.len()
                );
            }
        }
        Ok(file)
    }

    pub fn metadata(&self) -> &BTreeMap<String, Value> {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// Tensor names, sorted.
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    /// A tensor's stored bytes, in the mapped file.
    pub fn tensor_bytes(&self, name: &str) -> Result<(&TensorInfo, &[u8])> {
        let Some(info) = self.tensors.get(name) else {
            bail!("tensor `{name}` is missing from the GGUF file");
        };
        let mmap = &self.shards[info.shard].1;
        Ok((info, &mmap[info.start..info.start + info.len]))
    }

    /// A tensor's info and the mapped shard that holds its bytes (at `info.start..info.start + info.len`).
    pub fn tensor_view(&self, name: &str) -> Result<(&TensorInfo, Arc<Mmap>)> {
        let Some(info) = self.tensors.get(name) else {
            bail!("tensor `{name}` is missing from the GGUF file");
        };
        Ok((info, self.shards[info.shard].1.clone()))
    }
}

/// The shards of the model `path` belongs to: `path` alone, or `<prefix>-0000i-of-0000N.gguf` for i in 1..=N.
fn shard_paths(path: &Path) -> Result<Vec<PathBuf>> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some(stem) = name.strip_suffix(".gguf") else {
        return Ok(vec![path.to_path_buf()]);
    };
    let parts: Vec<&str> = stem.rsplitn(4, '-').collect();
    let is_split = parts.len() == 4
        && parts[1] == "of"
        && [parts[0], parts[2]]
            .iter()
            .all(|p| p.len() == 5 && p.bytes().all(|b| b.is_ascii_digit()));
    if !is_split {
        return Ok(vec![path.to_path_buf()]);
    }
    let count: usize = parts[0].parse().unwrap_or(0);
    if count == 0 {
        bail!("{}: a split of 0 files", path.display());
    }
    let dir = path.parent().unwrap_or(Path::new(""));
    Ok((1..=count)
        .map(|i| dir.join(format!("{}-{i:05}-of-{count:05}.gguf", parts[3])))
        .collect())
}

/// Reads little-endian values from a byte slice, failing with the offset on a short read.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        match self.at.checked_add(n).filter(|&end| end <= self.bytes.len()) {
            Some(end) => {
                let s = &self.bytes[self.at..end];
                self.at = end;
                Ok(s)
            }
            None => bail!(
                "truncated: {n} bytes wanted at offset {}, the file has {}",
                self.at,
                self.bytes.len()
            ),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A count or length that must fit in what is left of the file, at `min_size` bytes per element.
    fn count(&mut self, what: &str, min_size: usize) -> Result<usize> {
        let n = self.u64()?;
        let left = (self.bytes.len() - self.at) as u64;
        if n.saturating_mul(min_size as u64) > left {
            bail!("{what} of {n} at offset {} runs past the end of the file", self.at - 8);
        }
        Ok(n as usize)
    }

    fn string(&mut self) -> Result<String> {
        let n = self.count("a string length", 1)?;
        // Invalid UTF-8 exists in published files; keep what can be read.
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }

    fn value(&mut self, kind: u32) -> Result<Value> {
        Ok(match kind {
            0 => Value::U8(self.array::<1>()?[0]),
            1 => Value::I8(self.array::<1>()?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => Value::Bool(self.array::<1>()?[0] != 0),
            8 => Value::String(self.string()?),
            9 => {
                let elem = self.u32()?;
                if elem == 9 {
                    bail!("an array of arrays at offset {}", self.at - 4);
                }
                let n = self.count("an array length", 1)?;
                Value::Array((0..n).map(|_| self.value(elem)).collect::<Result<_>>()?)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            other => bail!("unknown value type {other} at offset {}", self.at - 4),
        })
    }
}

type Parsed = (BTreeMap<String, Value>, Vec<(String, TensorInfo)>);

/// The metadata and tensor infos of one file (shard `shard`).
fn parse(bytes: &[u8], shard: usize) -> Result<Parsed> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(4)? != MAGIC {
        bail!("it does not start with the GGUF magic");
    }
    let version = r.u32()?;
    if version == 0x0300_0000 || version == 0x0200_0000 {
        bail!("it is big-endian; only little-endian files are read");
    }
    if !(2..=3).contains(&version) {
        bail!("GGUF version {version} (versions 2 and 3 are read)");
    }
    let n_tensors = r.count("a tensor count", 8)?;
    let n_kv = r.count("a key-value count", 12)?;
    let mut metadata = BTreeMap::new();
    for _ in 0..n_kv {
        let key = r.string()?;
        if key.is_empty() {
            bail!("an empty key at offset {}", r.at);
        }
        let kind = r.u32()?;
        let value = r.value(kind).with_context(|| format!("key `{key}`"))?;
        if metadata.insert(key.clone(), value).is_some() {
            bail!("key `{key}` appears twice");
        }
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(Value::U32(a)) if a.is_power_of_two() => *a as u64,
        Some(other) => bail!("general.alignment must be a power-of-two u32, found {other:?}"),
    };
    let mut infos = Vec::with_capacity(n_tensors);
    for _ in 0..n_tensors {
        let name = r.string()?;
        let n_dims = r.u32()? as usize;
        if n_dims == 0 || n_dims > 4 {
            bail!("tensor `{name}` has {n_dims} dimensions (1 to 4 are allowed)");
        }
        let ne: Vec<u64> = (0..n_dims).map(|_| r.u64()).collect::<Result<_>>()?;
        let format = BlockFormat::from_ggml_type(r.u32()?).with_context(|| format!("tensor `{name}`"))?;
        let offset = r.u64()?;
        infos.push((name, ne, format, offset));
    }
    let data_start = (r.at as u64).next_multiple_of(alignment);
    let mut tensors = Vec::with_capacity(infos.len());
    for (name, ne, format, offset) in infos {
        let elements = ne.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
        let len = match elements {
            Some(n) if ne[0] % format.block_len() as u64 == 0 => {
                n / format.block_len() as u64 * format.block_bytes() as u64
            }
            Some(_) => bail!(
                "tensor `{name}`: a row of {} values is not a whole number of {} blocks",
                ne[0],
                format.name()
            ),
            None => bail!("tensor `{name}`: its dimensions {ne:?} overflow"),
        };
        if offset % alignment != 0 {
            bail!("tensor `{name}`: offset {offset} is not a multiple of the alignment {alignment}");
        }
        let start = data_start.checked_add(offset);
        match start.and_then(|s| s.checked_add(len)) {
            Some(end) if end <= bytes.len() as u64 => {}
            _ => bail!("tensor `{name}`: {len} bytes at offset {offset} run past the end of the file (truncated?)"),
        }
        tensors.push((
            name,
            TensorInfo {
                shape: ne.iter().rev().map(|&d| d as usize).collect(),
                format,
                shard,
                start: (data_start + offset) as usize,
                len: len as usize,
            },
        ));
    }
    Ok((metadata, tensors))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gguf_format")
    }

    /// `tools/make_gguf_format_fixtures.py` wrote the files with gguf-py and what `GGUFReader` reads back.
    fn expected(name: &str) -> serde_json::Value {
        let text = std::fs::read_to_string(fixtures().join(format!("{name}.json"))).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn json(v: &Value) -> serde_json::Value {
        match v {
            Value::String(s) => serde_json::json!(s),
            Value::Bool(b) => serde_json::json!(b),
            Value::Array(items) => serde_json::Value::Array(items.iter().map(json).collect()),
            Value::F32(f) => serde_json::json!(*f as f64),
            Value::F64(f) => serde_json::json!(f),
            Value::I8(i) => serde_json::json!(i),
            Value::I16(i) => serde_json::json!(i),
            Value::I32(i) => serde_json::json!(i),
            Value::I64(i) => serde_json::json!(i),
            other => serde_json::json!(other.as_u64()),
        }
    }

    fn check_against_reader(file: &GgufFile, expected: &serde_json::Value) {
        for (key, v) in expected["metadata"].as_object().unwrap() {
            let got = file.get(key).unwrap_or_else(|| panic!("key {key} missing"));
            assert_eq!(&json(got), v, "key {key}");
        }
        let tensors = expected["tensors"].as_object().unwrap();
        assert_eq!(file.tensor_names().count(), tensors.len());
        for (name, t) in tensors {
            let (info, bytes) = file.tensor_bytes(name).unwrap();
            let shape: Vec<usize> = serde_json::from_value(t["shape"].clone()).unwrap();
            assert_eq!(info.shape, shape, "{name}");
            assert_eq!(info.format.ggml_type() as u64, t["type"].as_u64().unwrap(), "{name}");
            let sum: u64 = bytes.iter().map(|&b| b as u64).sum();
            assert_eq!(
                (bytes.len() as u64, sum),
                (t["bytes"].as_u64().unwrap(), t["byte_sum"].as_u64().unwrap()),
                "{name}"
            );
        }
    }

    #[test]
    fn reads_what_gguf_py_writes() {
        let file = GgufFile::open(&fixtures().join("types.gguf")).unwrap();
        check_against_reader(&file, &expected("types"));
    }

    #[test]
    fn opens_a_sharded_model_from_any_shard() {
        let expected = expected("split");
        for shard in ["split-00001-of-00003.gguf", "split-00003-of-00003.gguf"] {
            let file = GgufFile::open(&fixtures().join(shard)).unwrap();
            check_against_reader(&file, &expected);
            assert_eq!(file.shards.len(), 3);
        }
    }

    #[test]
    fn a_damaged_file_is_a_one_line_error() {
        let good = std::fs::read(fixtures().join("types.gguf")).unwrap();
        let dir = std::env::temp_dir().join(format!("volt-gguf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            // Past the last tensor's padding to the 64-byte alignment.
            ("truncated", good[..good.len() - 65].to_vec(), "past the end"),
            ("header only", good[..100].to_vec(), "past the end"),
            ("no magic", [b"GGML", &good[4..]].concat(), "magic"),
            (
                "version 1",
                [&good[..4], &1u32.to_le_bytes()[..], &good[8..]].concat(),
                "version 1",
            ),
            (
                "huge count",
                [&good[..8], &u64::MAX.to_le_bytes()[..], &good[16..]].concat(),
                "runs past",
            ),
        ];
        for (what, bytes, needle) in cases {
            let path = dir.join(format!("{}.gguf", what.replace(' ', "_")));
            std::fs::write(&path, bytes).unwrap();
            let e = GgufFile::open(&path)
                .err()
                .unwrap_or_else(|| panic!("{what}: opened"))
                .to_string();
            assert!(e.contains(needle) && !e.contains('\n'), "{what}: {e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
