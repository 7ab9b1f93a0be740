"""trtalk.models"""
