//! Links libtpms through pkg-config (Debian: `libtpms-dev`).

fn main() {
    if let Err(e) = pkg_config::Config::new()
        .atleast_version("0.9")
        .probe("libtpms")
    {
        panic!(
            "libtpms not found ({e}); install it with `apt-get install libtpms-dev` \
             (scripts/setup does)"
        );
    }
}
