// Package shoalpb holds Shoal's API and object model, generated from the
// .proto files beside it by `make proto`.
package shoalpb
