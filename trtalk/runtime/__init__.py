"""trtalk.runtime"""
