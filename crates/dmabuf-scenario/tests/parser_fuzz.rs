//! Random and mutated protocol files never make the parser panic, and every
//! error it gives names a position inside the file (or none at all).

use dmabuf_scenario::builtin::{BUILTIN, Library};
use dmabuf_scenario::file;
use proptest::prelude::*;

fn check(text: &str) {
    match file::parse("fuzz.toml", text) {
        Ok(f) => {
            // Whatever parsed must also resolve or refuse cleanly.
            let lib = Library::builtin().unwrap();
            let _ = lib.questions(&f);
        }
        Err(e) => {
            let lines = text.lines().count().max(1) + 1;
            assert!(e.line <= lines, "{e} beyond the file's {lines} lines");
            assert!(!e.message.is_empty());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn random_text_never_panics(text in "\\PC{0,400}") {
        check(&text);
    }

    #[test]
    fn mutated_builtin_files_never_panic(
        which in 0..BUILTIN.len(),
        at in any::<prop::sample::Index>(),
        len in 0usize..12,
        insert in "[\\[\\]\"=,()a-z_0-9 \n!.-]{0,12}",
    ) {
        let src = BUILTIN[which].1;
        let mut cut = at.index(src.len() + 1);
        while !src.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut end = (cut + len).min(src.len());
        while !src.is_char_boundary(end) {
            end += 1;
        }
        let text = format!("{}{}{}", &src[..cut], insert, &src[end..]);
        check(&text);
    }
}
