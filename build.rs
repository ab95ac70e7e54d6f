//! Link settings for the `torch` and `cuda` features.
//!
//! - `torch`: an rpath to libtorch (and the CUDA runtime libraries the
//!   package-index build of libtorch loads), so `hams` runs without
//!   `LD_LIBRARY_PATH`.
//! - `cuda`: nothing in the binary references libtorch_cuda directly, so the
//!   linker's `--as-needed` drops it and CUDA looks unavailable at run time
//!   (tch issue #980). `--no-as-needed -ltorch` keeps it.

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let torch = std::env::var_os("CARGO_FEATURE_TORCH").is_some();
    let cuda = std::env::var_os("CARGO_FEATURE_CUDA").is_some();
    if !torch {
        return;
    }
    if let Some(libtorch) = std::env::var_os("LIBTORCH") {
        let libtorch = std::path::PathBuf::from(libtorch);
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", libtorch.join("lib").display());
        // The pip layout: DIR/torch (LIBTORCH) beside DIR/nvidia/<package>/lib.
        if let Some(nvidia) = libtorch.parent().map(|p| p.join("nvidia")) {
            for pkg in std::fs::read_dir(nvidia).into_iter().flatten().flatten() {
                let lib = pkg.path().join("lib");
                if lib.is_dir() {
                    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
                }
            }
        }
    }
    if cuda {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
