//! The make pipeline. (Being written.)
