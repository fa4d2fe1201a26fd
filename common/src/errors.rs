//! How every Feral binary prints an error: the error and its sources joined with `: `,
//! leaving out a source whose words the message already carries.

/// `error` and its chain of sources as one line.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut current = error.source();
    while let Some(cause) = current {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        current = cause.source();
    }
    line
}

/// A binary's exit: success, or its error printed on one line to stderr and failure.
pub fn exit_code(result: Result<(), Box<dyn std::error::Error + Send + Sync>>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", error_chain(error.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as &(dyn std::error::Error + 'static))
        }
    }

    #[test]
    fn repeated_sources_are_left_out() {
        let error =
            Layer("transport error", Some(Box::new(Layer("tcp connect", Some(Box::new(Layer("tcp connect", Some(Box::new(Layer("refused", None))))))))));
        assert_eq!(error_chain(&error), "transport error: tcp connect: refused");
        let error = Layer("cannot read f.toml: no such file", Some(Box::new(Layer("no such file", None))));
        assert_eq!(error_chain(&error), "cannot read f.toml: no such file");
    }
}
