//! Tells the tests, at compile time, which real services and SDKs this build is tested
//! with: a test that needs one that is missing is marked ignored, so that skipped tests
//! show in libtest's summary line (`N ignored`), not only on stderr.

const CHECKS: &[(&str, &[&str])] = &[
    ("services", &["BACKENDAI_TEST_DB_URL", "BACKENDAI_TEST_REDIS_URL", "BACKENDAI_TEST_ETCD_ADDR"]),
    ("sdk", &["BACKENDAI_SDK_PYTHON"]),
    ("sdk151", &["BACKENDAI_SDK151_PYTHON"]),
    ("sdk142", &["BACKENDAI_SDK142_PYTHON"]),
];

fn main() {
    for (cfg, vars) in CHECKS {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        for var in *vars {
            println!("cargo::rerun-if-env-changed={var}");
        }
        if vars.iter().all(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty())) {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}
