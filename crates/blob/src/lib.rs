pub mod seal;
