//! Text similarity measures for the `similarity` assertion, each in 0..=1 (1 = identical).
//!
//! Levenshtein is `strsim`'s normalised edit distance over characters. ROUGE-L is written here:
//! it is one longest-common-subsequence table over word tokens, kept to a single row so memory
//! stays linear in the shorter text.

use chorus_core::assertion::SimilarityMethod;

/// How similar `candidate` is to `reference` by `method`.
pub(crate) fn similarity(method: SimilarityMethod, candidate: &str, reference: &str) -> f64 {
    match method {
        SimilarityMethod::Levenshtein => strsim::normalized_levenshtein(candidate, reference),
        SimilarityMethod::RougeL => rouge_l(candidate, reference),
    }
}

/// The method's name as a spec writes it, for reasons.
pub(crate) fn method_name(method: SimilarityMethod) -> &'static str {
    match method {
        SimilarityMethod::Levenshtein => "levenshtein",
        SimilarityMethod::RougeL => "rouge_l",
    }
}

/// ROUGE-L F-measure (β = 1) over lowercased word tokens: 2·LCS ÷ (candidate + reference words).
/// Two texts without words are identical (1); one without words shares nothing (0).
pub(crate) fn rouge_l(candidate: &str, reference: &str) -> f64 {
    let candidate = candidate.to_lowercase();
    let reference = reference.to_lowercase();
    let (candidate, reference) = (words(&candidate), words(&reference));
    match (candidate.len(), reference.len()) {
        (0, 0) => 1.0,
        (0, _) | (_, 0) => 0.0,
        (c, r) => 2.0 * lcs_len(&candidate, &reference) as f64 / (c + r) as f64,
    }
}

/// Runs of alphanumeric characters; everything else separates words.
fn words(text: &str) -> Vec<&str> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect()
}

/// Length of the longest common subsequence, in O(n·m) time and O(min(n, m)) memory.
fn lcs_len<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    // `row[j]` is the LCS of the long prefix seen so far and `short[..j]`.
    let mut row = vec![0; short.len() + 1];
    for x in long {
        // The previous row's `row[j]`, before this row overwrote it.
        let mut diagonal = 0;
        for (j, y) in short.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if x == y {
                diagonal + 1
            } else {
                above.max(row[j])
            };
            diagonal = above;
        }
    }
    row[short.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn levenshtein_is_one_minus_edits_over_the_longer_length() {
        let kitten = similarity(SimilarityMethod::Levenshtein, "kitten", "sitting");
        assert!(close(kitten, 1.0 - 3.0 / 7.0), "{kitten}");
        // Characters, not bytes: one substitution in a four-character word.
        let accent = similarity(SimilarityMethod::Levenshtein, "café", "cafe");
        assert!(close(accent, 0.75), "{accent}");
        assert_eq!(similarity(SimilarityMethod::Levenshtein, "", ""), 1.0);
        assert_eq!(similarity(SimilarityMethod::Levenshtein, "abc", ""), 0.0);
    }

    #[test]
    fn rouge_l_is_the_lcs_f_measure_over_words() {
        // LCS "the cat on the mat": 5 of 6 words each way.
        let mat = rouge_l("the cat sat on the mat", "the cat lay on the mat");
        assert!(close(mat, 10.0 / 12.0), "{mat}");
        assert_eq!(format!("{mat:.3}"), "0.833");
        // Precision 2/2, recall 2/4: F = 2·1·0.5 / 1.5.
        let short = rouge_l("police killed", "police killed the gunman");
        assert!(close(short, 2.0 / 3.0), "{short}");
        // Order matters: a subsequence, not a bag of words.
        let reversed = rouge_l("a b c d", "d c b a");
        assert!(close(reversed, 2.0 / 8.0), "{reversed}");
        assert_eq!(rouge_l("Hello, World!", "hello world"), 1.0);
        assert_eq!(rouge_l("", "  ...  "), 1.0);
        assert_eq!(rouge_l("", "words"), 0.0);
        assert_eq!(rouge_l("words", "?!"), 0.0);
        assert_eq!(rouge_l("alpha beta", "gamma delta"), 0.0);
    }

    #[test]
    fn lcs_is_symmetric_and_handles_empty_sides() {
        let a: Vec<char> = "ABCBDAB".chars().collect();
        let b: Vec<char> = "BDCABA".chars().collect();
        assert_eq!((lcs_len(&a, &b), lcs_len(&b, &a)), (4, 4));
        assert_eq!(lcs_len(&a, &[]), 0);
        assert_eq!(lcs_len(&a, &a), a.len());
    }

    #[test]
    fn words_split_on_anything_not_alphanumeric() {
        assert_eq!(
            words("it's 3 o'clock—été"),
            ["it", "s", "3", "o", "clock", "été"]
        );
        assert!(words(" \n-- ").is_empty());
        assert_eq!(
            method_name(SimilarityMethod::RougeL),
            "rouge_l",
            "the name a spec writes"
        );
    }
}
