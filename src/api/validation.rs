//! Validation of user input for every kind.
