//! Prompt assembly: templates, prefix-stable order, token budget.
