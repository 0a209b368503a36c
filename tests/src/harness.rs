//! The end-to-end suites' test harness (on `libtest-mimic`): the standard harness has
//! no way to skip a test at run time, so a test whose service or kernel feature is
//! missing used to return early and count as *passed*. Here such a test calls
//! [`skip`], and the run reports it as `ignored` with its reason; the summary's
//! "N ignored" is the number of tests that did not run. `OPENSHELL_TEST_REQUIRE`
//! (see [`need`]) turns a missing feature into a failure instead (CI sets it).
//!
//! A suite lists its tests once: `openshell_tests::suite!(test_a, test_b, ...);`
//! gives it a `main` that accepts the usual test-binary arguments (filters,
//! `--exact`, `--test-threads`, `--list`, `--ignored`).

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

use libtest_mimic::{Arguments, Completion, Failed, Trial};

/// The panic payload that marks a skipped test (see [`skip`]).
pub struct Skip(pub String);

/// End the current test as skipped, with `reason` (printed in the run's report).
pub fn skip(reason: impl Into<String>) -> ! {
    panic::panic_any(Skip(reason.into()))
}

/// Go on when `available`; otherwise fail when `feature` is listed in
/// `OPENSHELL_TEST_REQUIRE`, else skip with `reason` (which says what to install).
pub fn need(feature: &str, available: bool, reason: &str) {
    if available {
        return;
    }
    if crate::required(feature) {
        panic!("{reason}, but OPENSHELL_TEST_REQUIRE asks for {feature}");
    }
    skip(reason.to_string());
}

fn message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panicked (non-string payload)".to_string()
    }
}

/// A skip is not a failure: keep the default panic report for real panics only.
fn quiet_skips() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<Skip>().is_none() {
                default(info);
            }
        }));
    });
}

/// Run `tests` as a test binary does, and exit with its status.
pub fn run(tests: Vec<(&'static str, fn())>) -> ! {
    let args = Arguments::from_args();
    quiet_skips();
    let trials = tests
        .into_iter()
        .map(|(name, f)| {
            Trial::ignorable_test(name, move || {
                match panic::catch_unwind(AssertUnwindSafe(f)) {
                    Ok(()) => Ok(Completion::Completed),
                    Err(p) => match p.downcast_ref::<Skip>() {
                        Some(Skip(reason)) => Ok(Completion::ignored_with(reason)),
                        None => Err(Failed::from(message(p.as_ref()))),
                    },
                }
            })
        })
        .collect();
    libtest_mimic::run(&args, trials).exit()
}

/// `suite!(a, b, c)`: the suite's `main`, running the test functions `a`, `b`, `c`.
#[macro_export]
macro_rules! suite {
    ($($test:ident),* $(,)?) => {
        fn main() {
            $crate::harness::run(vec![$((stringify!($test), $test as fn())),*]);
        }
    };
}
