//! NVRTC, loaded by full path with `libloading`. cudarc's own NVRTC loader tries only bare sonames of the
//! CUDA major it was built for (12 here), so it misses CUDA 13 and the pip wheels' directories, and panics
//! when nothing loads; this one searches (see `candidates`) and returns an error instead.

use std::ffi::{c_char, c_int, CStr, CString};
use std::path::{Path, PathBuf};

use libloading::Library;
use volt_runtime::{bail, Result};

type Status = c_int;
type Program = *mut std::ffi::c_void;

/// The NVRTC functions the backend calls, resolved once.
pub struct Nvrtc {
    pub path: PathBuf,
    pub version: (i32, i32),
    create: unsafe extern "C" fn(
        *mut Program,
        *const c_char,
        *const c_char,
        c_int,
        *const *const c_char,
        *const *const c_char,
    ) -> Status,
    compile: unsafe extern "C" fn(Program, c_int, *const *const c_char) -> Status,
    destroy: unsafe extern "C" fn(*mut Program) -> Status,
    log_size: unsafe extern "C" fn(Program, *mut usize) -> Status,
    log: unsafe extern "C" fn(Program, *mut c_char) -> Status,
    cubin_size: unsafe extern "C" fn(Program, *mut usize) -> Status,
    cubin: unsafe extern "C" fn(Program, *mut c_char) -> Status,
    error_string: unsafe extern "C" fn(Status) -> *const c_char,
    // Keeps the symbols above valid.
    _lib: Library,
}

/// What one compilation produced.
pub struct Compiled {
    pub cubin: Vec<u8>,
    /// NVRTC's log (warnings), empty when silent.
    pub log: String,
}

impl Nvrtc {
    /// The first NVRTC that loads, from the places `candidates` lists.
    pub fn load() -> Result<Nvrtc> {
        let candidates = candidates();
        let mut tried = Vec::new();
        for path in &candidates {
            let bare = path.components().count() == 1;
            if !bare && !path.exists() {
                continue;
            }
            match Nvrtc::open(path) {
                Ok(n) => return Ok(n),
                // A bare name that does not load is simply not on the loader's path.
                Err(_) if bare => {}
                Err(e) => tried.push(format!("{} ({e})", path.display())),
            }
        }
        if tried.is_empty() {
            bail!(
                "NVRTC not found: set CUDA_HOME to a CUDA 12.x/13.x toolkit, add libnvrtc to LD_LIBRARY_PATH, or \
                 `pip install nvidia-cuda-nvrtc-cu12`"
            );
        }
        bail!("NVRTC did not load: {}", tried.join("; "))
    }

    fn open(path: &Path) -> Result<Nvrtc> {
        // SAFETY: loading NVRTC runs its initialisers only; the symbols are typed as in nvrtc.h.
        unsafe {
            let lib = Library::new(path).map_err(|e| match std::error::Error::source(&e) {
                Some(why) => volt_runtime::error::Error::msg(format!("{e}: {why}")),
                None => volt_runtime::error::Error::msg(e.to_string()),
            })?;
            macro_rules! sym {
                ($name:literal) => {
                    *lib.get(concat!($name, "\0").as_bytes())
                        .map_err(|e| volt_runtime::error::Error::msg(format!("{}: {e}", $name)))?
                };
            }
            let version_fn: unsafe extern "C" fn(*mut c_int, *mut c_int) -> Status = sym!("nvrtcVersion");
            let (mut major, mut minor) = (0, 0);
            if version_fn(&mut major, &mut minor) != 0 {
                bail!("nvrtcVersion failed");
            }
            Ok(Nvrtc {
                path: path.to_path_buf(),
                version: (major, minor),
                create: sym!("nvrtcCreateProgram"),
                compile: sym!("nvrtcCompileProgram"),
                destroy: sym!("nvrtcDestroyProgram"),
                log_size: sym!("nvrtcGetProgramLogSize"),
                log: sym!("nvrtcGetProgramLog"),
                cubin_size: sym!("nvrtcGetCUBINSize"),
                cubin: sym!("nvrtcGetCUBIN"),
                error_string: sym!("nvrtcGetErrorString"),
                _lib: lib,
            })
        }
    }

    fn check(&self, status: Status, what: &str) -> Result<()> {
        if status == 0 {
            return Ok(());
        }
        // SAFETY: NVRTC returns a static string for every status.
        let msg = unsafe { CStr::from_ptr((self.error_string)(status)) }.to_string_lossy();
        bail!("{what}: {msg}")
    }

    /// Compiles `source` to a CUBIN with `options` (e.g. `--gpu-architecture=sm_90a`). A compile error comes
    /// back as one line carrying NVRTC's first error messages.
    pub fn compile(&self, name: &str, source: &str, options: &[String]) -> Result<Compiled> {
        let (c_src, c_name) = (cstring(source)?, cstring(name)?);
        let c_opts: Vec<CString> = options.iter().map(|o| cstring(o)).collect::<Result<_>>()?;
        let opt_ptrs: Vec<*const c_char> = c_opts.iter().map(|o| o.as_ptr()).collect();
        let mut prog: Program = std::ptr::null_mut();
        // SAFETY: every pointer outlives the calls; the program is destroyed on every path below.
        unsafe {
            self.check(
                (self.create)(
                    &mut prog,
                    c_src.as_ptr(),
                    c_name.as_ptr(),
                    0,
                    std::ptr::null(),
                    std::ptr::null(),
                ),
                "nvrtcCreateProgram",
            )?;
            let status = (self.compile)(prog, opt_ptrs.len() as c_int, opt_ptrs.as_ptr());
            let log = self.program_log(prog);
            let result = self.check(status, &format!("compiling {name}")).map_err(|e| {
                let errors: Vec<&str> = log.lines().filter(|l| l.contains("error")).take(3).collect();
                e.context(errors.join(" | "))
            });
            let cubin = result.and_then(|_| {
                let mut size = 0usize;
                self.check((self.cubin_size)(prog, &mut size), "nvrtcGetCUBINSize")?;
                let mut bytes = vec![0u8; size];
                self.check((self.cubin)(prog, bytes.as_mut_ptr().cast()), "nvrtcGetCUBIN")?;
                Ok(bytes)
            });
            (self.destroy)(&mut prog);
            Ok(Compiled { cubin: cubin?, log })
        }
    }

    /// # Safety
    /// `prog` must be a live program.
    unsafe fn program_log(&self, prog: Program) -> String {
        let mut size = 0usize;
        if (self.log_size)(prog, &mut size) != 0 || size <= 1 {
            return String::new();
        }
        let mut buf = vec![0u8; size];
        if (self.log)(prog, buf.as_mut_ptr().cast()) != 0 {
            return String::new();
        }
        String::from_utf8_lossy(&buf[..size - 1]).trim().to_string()
    }
}

fn cstring(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| volt_runtime::error::Error::msg("NUL byte in NVRTC input"))
}

/// Where NVRTC is looked for, in order: `$CUDA_HOME`/`$CUDA_PATH` (lib64, lib), the dynamic loader's search
/// (bare names: LD_LIBRARY_PATH, ld.so.cache), the usual toolkit prefixes, then the `nvidia-cuda-nvrtc`
/// pip wheels in the Python environments found via `$VIRTUAL_ENV` and the `python3` on PATH.
fn candidates() -> Vec<PathBuf> {
    const NAMES: [&str; 3] = ["libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12"];
    let mut out = Vec::new();
    let lib_dirs = |prefix: &Path| [prefix.join("lib64"), prefix.join("lib")];
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(prefix) = std::env::var_os(var) {
            for dir in lib_dirs(Path::new(&prefix)) {
                out.extend(NAMES.iter().map(|n| dir.join(n)));
            }
        }
    }
    out.extend(NAMES.iter().map(PathBuf::from));
    for prefix in ["/usr/local/cuda", "/opt/cuda"] {
        for dir in lib_dirs(Path::new(prefix)) {
            out.extend(NAMES.iter().map(|n| dir.join(n)));
        }
    }
    for site in python_site_dirs() {
        out.push(site.join("nvidia/cu13/lib/libnvrtc.so.13"));
        out.push(site.join("nvidia/cuda_nvrtc/lib/libnvrtc.so.13"));
        out.push(site.join("nvidia/cuda_nvrtc/lib/libnvrtc.so.12"));
    }
    out
}

/// site-packages folders that may hold the NVIDIA wheels.
fn python_site_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV") {
        if let Ok(entries) = std::fs::read_dir(Path::new(&venv).join("lib")) {
            dirs.extend(entries.flatten().map(|e| e.path().join("site-packages")));
        }
    }
    // The interpreter on PATH knows its own site-packages; without one this simply finds nothing.
    let listed = std::process::Command::new("python3")
        .args([
            "-c",
            "import site,sys; print('\\n'.join(site.getsitepackages() + [site.getusersitepackages()]))",
        ])
        .stderr(std::process::Stdio::null())
        .output();
    if let Ok(out) = listed {
        dirs.extend(String::from_utf8_lossy(&out.stdout).lines().map(PathBuf::from));
    }
    dirs
}
