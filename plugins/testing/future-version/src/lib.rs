//! Test plugin built against `certline:device@0.3.0`, a newer minor version than
//! the host supports.

wit_bindgen::generate!({ path: "wit", world: "plugin" });

struct Future;

impl exports::certline::device::device::Guest for Future {
    fn info() -> String {
        "from the future".to_string()
    }
}

export!(Future);
