"""Renderers: model -> values (argv lists, XML strings).  Callers write them."""
