//! Compiles the BPF programs in `bpf/*.c` with clang into `OUT_DIR`. Without
//! a working clang the crate still builds (cfg `xdp_no_bpf`), and every
//! `attach` says how to get the real programs.
use std::path::{Path, PathBuf};
use std::process::Command;

const PROGRAMS: &[&str] = &["director", "decap", "pass"];

fn main() {
    println!("cargo::rustc-check-cfg=cfg(xdp_no_bpf)");
    println!("cargo::rerun-if-changed=bpf");
    println!("cargo::rerun-if-env-changed=CLANG");
    let Some(out) = std::env::var_os("OUT_DIR").map(PathBuf::from) else {
        println!("cargo::warning=OUT_DIR not set; building without BPF programs");
        println!("cargo::rustc-cfg=xdp_no_bpf");
        return;
    };
    let bpf = Path::new("bpf");
    if let Ok(entries) = std::fs::read_dir(bpf) {
        for e in entries.flatten() {
            println!("cargo::rerun-if-changed={}", e.path().display());
        }
    }
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    let mut include = vec![];
    if let Some(dir) = multiarch_include() {
        include.push(format!("-I{dir}"));
    }
    for prog in PROGRAMS {
        let src = bpf.join(format!("{prog}.c"));
        let obj = out.join(format!("{prog}.o"));
        let result = Command::new(&clang)
            .args(["-O2", "-g", "-Wall", "-target", "bpf", "-c"])
            .args(&include)
            .arg(&src)
            .arg("-o")
            .arg(&obj)
            .output();
        let failure = match result {
            Ok(o) if o.status.success() => None,
            Ok(o) => Some(format!(
                "{clang} failed on {}: {}",
                src.display(),
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .take(5)
                    .collect::<Vec<_>>()
                    .join(" | ")
            )),
            Err(e) => Some(format!("cannot run {clang}: {e}")),
        };
        if let Some(why) = failure {
            println!(
                "cargo::warning=xdp: building without BPF programs ({why}); \
                 install clang llvm libbpf-dev and rebuild"
            );
            println!("cargo::rustc-cfg=xdp_no_bpf");
            return;
        }
    }
}

/// `/usr/include/<multiarch>` (for asm/types.h), from gcc or the target.
fn multiarch_include() -> Option<String> {
    let from_gcc = Command::new("gcc")
        .arg("-print-multiarch")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty());
    let triple = from_gcc.or_else(|| {
        let arch = std::env::var("CARGO_CFG_TARGET_ARCH").ok()?;
        Some(format!("{arch}-linux-gnu"))
    })?;
    let dir = format!("/usr/include/{triple}");
    Path::new(&dir).is_dir().then_some(dir)
}
