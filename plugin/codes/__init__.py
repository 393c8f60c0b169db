"""One code's story and the merchant's operations on it: look up a code as a shopper typed it, void,
extend, reassign. Imports checkout, distribution, campaigns and the store."""
