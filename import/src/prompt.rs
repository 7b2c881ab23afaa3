//! Asking the operator to confirm something that destroys work.

use std::io::{BufRead, IsTerminal, Write};

use crate::ToolError;

/// Asks `question` on the terminal unless `yes`; anything but yes means nothing is done. When
/// standard input is not a terminal there is nobody to ask, so the answer is no, with a hint
/// to use `--yes`.
pub fn confirm(question: &str, yes: bool) -> Result<(), ToolError> {
    if yes {
        return Ok(());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(ToolError::Declined(format!("{question} Not confirmed (standard input is not a terminal): add --yes to go ahead")));
    }
    confirm_with(question, &mut stdin.lock(), &mut std::io::stderr())
}

/// [`confirm`] reading answers from `input` and asking on `output`: `y` or `yes` go ahead, an
/// empty answer, `n`, `no` or the end of the input do not, anything else asks again.
pub fn confirm_with(question: &str, input: &mut dyn BufRead, output: &mut dyn Write) -> Result<(), ToolError> {
    let declined = || ToolError::Declined("nothing done: not confirmed".into());
    loop {
        write!(output, "{question} [y/N] ").and_then(|()| output.flush()).map_err(|e| ToolError::Failed(format!("cannot ask: {e}")))?;
        let mut line = String::new();
        match input.read_line(&mut line) {
            Ok(0) => return Err(declined()),
            Ok(_) => {}
            Err(e) => return Err(ToolError::Failed(format!("cannot read the answer: {e}"))),
        }
        match line.trim().to_ascii_lowercase().as_str() {
            "y" | "yes" => return Ok(()),
            "" | "n" | "no" => return Err(declined()),
            _ => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(input: &str) -> (Result<(), ToolError>, String) {
        let mut output = Vec::new();
        let result = confirm_with("Remove it?", &mut input.as_bytes(), &mut output);
        (result, String::from_utf8(output).unwrap())
    }

    #[test]
    fn only_yes_goes_ahead() {
        assert!(answer("y\n").0.is_ok());
        assert!(answer("YES\n").0.is_ok());
        for no in ["\n", "n\n", "No\n", ""] {
            assert!(matches!(answer(no).0, Err(ToolError::Declined(_))), "{no:?}");
        }
        let (result, asked) = answer("maybe\nperhaps\ny\n");
        assert!(result.is_ok());
        assert_eq!(asked.matches("Remove it? [y/N]").count(), 3);
    }

    #[test]
    fn yes_skips_the_question() {
        assert!(confirm("Remove it?", true).is_ok());
    }
}
