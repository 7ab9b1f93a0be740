"""trtalk.audio"""
