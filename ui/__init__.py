"""Streamlit glue shared by the page scripts in ``app_pages/``: the Kensa context, the chosen
project (kept in the URL), page paths and the import forms.

Kept outside ``app_pages/`` so that folder holds page scripts only, and outside any folder named
``pages/``, which Streamlit would serve as pages on its own (DESIGN §9).
"""
