"""The dashboard's files (HTML, CSS, JavaScript); a package so that a wheel of the coordinator ships them."""
